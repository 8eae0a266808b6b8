//! `coe prepare`: the sandbox's snapshot built ahead of time.

use super::sandbox;
use crate::Failure;
use crate::output::print;

pub(crate) fn prepare() -> Result<(), Failure> {
    let sandbox = sandbox()?;
    print(&format!(
        "sandbox ready in {:.2} s (cache: {})\n",
        sandbox.prepare_time().as_secs_f64(),
        coe_sandbox::cache_dir_default().join("sandbox").display()
    ))
}
