//! A server on an ephemeral loopback port, for the tests.

#![allow(dead_code)]

use std::net::SocketAddr;

use coe_serve::{ServeConfig, SharedExecutor};

/// A running server; dropping it shuts the server down and waits for it.
pub(crate) struct Server {
    pub(crate) address: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    pub(crate) fn start(executor: SharedExecutor, config: ServeConfig) -> Self {
        let (address_tx, address_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                address_tx.send(listener.local_addr().unwrap()).unwrap();
                let router = coe_serve::router(executor, config);
                coe_serve::serve(listener, router, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
            });
        });
        Self {
            address: address_rx.recv().unwrap(),
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Starts a graceful shutdown without waiting for it.
    pub(crate) fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// POSTs `body` (any bytes) and returns the status, headers of interest and the JSON reply.
    pub(crate) fn post(&self, path: &str, body: &str) -> (u16, Option<String>, serde_json::Value) {
        self.post_with(path, body, None)
    }

    pub(crate) fn post_with(
        &self,
        path: &str,
        body: &str,
        token: Option<&str>,
    ) -> (u16, Option<String>, serde_json::Value) {
        let mut request = ureq::post(&self.url(path)).set("Content-Type", "application/json");
        if let Some(token) = token {
            request = request.set("Authorization", &format!("Bearer {token}"));
        }
        reply(request.send_string(body))
    }

    pub(crate) fn get(&self, path: &str, token: Option<&str>) -> (u16, String) {
        let mut request = ureq::get(&self.url(path));
        if let Some(token) = token {
            request = request.set("Authorization", &format!("Bearer {token}"));
        }
        match request.call() {
            Ok(response) => (response.status(), response.into_string().unwrap()),
            Err(ureq::Error::Status(code, response)) => (code, response.into_string().unwrap()),
            Err(e) => panic!("GET {path}: {e}"),
        }
    }
}

fn reply(result: Result<ureq::Response, ureq::Error>) -> (u16, Option<String>, serde_json::Value) {
    let response = match result {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(e) => panic!("request failed: {e}"),
    };
    let status = response.status();
    let retry_after = response.header("Retry-After").map(str::to_string);
    let text = response.into_string().unwrap();
    let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, retry_after, json)
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
