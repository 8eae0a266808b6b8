//! `coe exec-worker` (hidden): one sandbox serving requests on standard input and output, a
//! worker process of `coe_exec_pool::ProcessPool`.

use super::sandbox;
use crate::Failure;

pub(crate) fn exec_worker() -> Result<(), Failure> {
    let sandbox = sandbox()?;
    coe_exec_pool::serve_stdio(&sandbox)
        .map_err(|e| Failure::Internal(format!("coe exec-worker: {e}")))
}
