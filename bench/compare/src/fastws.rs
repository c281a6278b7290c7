//! The HTTP side of the `fastwebsockets` peers: hyper serves each TCP
//! connection, and `fastwebsockets::upgrade` answers the upgrade request and
//! hands the upgraded stream to the WebSocket handler in its own task. This is
//! how the crate's docs and examples run a server.

use std::future::Future;

use bytes::Bytes;
use fastwebsockets::upgrade::{upgrade, UpgradeFut};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

/// Accepts connections until Ctrl-C or SIGTERM; `handler` gets every upgrade.
pub async fn serve<H, F>(listener: tokio::net::TcpListener, handler: H) -> anyhow::Result<()>
where
    H: Fn(UpgradeFut) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let accept = async {
        loop {
            let (tcp, _) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("accept failed: {e}");
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let handler = handler.clone();
                    async move { Ok::<_, std::convert::Infallible>(on_request(req, handler)) }
                });
                let conn = http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .with_upgrades();
                if let Err(e) = conn.await {
                    eprintln!("HTTP connection failed: {e}");
                }
            });
        }
    };
    tokio::select! {
        _ = accept => {}
        _ = crate::shutdown_signal() => {}
    }
    Ok(())
}

fn on_request<H, F>(mut req: Request<Incoming>, handler: H) -> Response<Empty<Bytes>>
where
    H: Fn(UpgradeFut) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    match upgrade(&mut req) {
        Ok((response, fut)) => {
            tokio::spawn(handler(fut));
            response
        }
        Err(e) => {
            let mut response = Response::new(Empty::new());
            *response.status_mut() = StatusCode::BAD_REQUEST;
            eprintln!("not a WebSocket upgrade: {e}");
            response
        }
    }
}
