//! The CLI's side of the API: HTTP/1.1 over the daemon's unix socket. Errors say what to do
//! ("daemon not running: start it with …").

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

use crate::api::SOURCE_HEADER;
use crate::cli::ClientArgs;

/// How a client command ended: exit code 0, 1 (could not ask) or 2 (the daemon said no).
pub enum Done {
    Ok,
    Rejected,
}

/// Runs a client command on a small runtime and maps its result to the exit code.
pub fn run(command: impl std::future::Future<Output = Result<Done>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("ferrule: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(command) {
        Ok(Done::Ok) => ExitCode::SUCCESS,
        Ok(Done::Rejected) => ExitCode::from(2),
        Err(err) => {
            eprintln!("ferrule: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// What the source header encodes besides non-ASCII: controls, space and `%` itself.
const SOURCE_ENCODE: percent_encoding::AsciiSet = percent_encoding::CONTROLS.add(b' ').add(b'%');

pub struct Response {
    pub status: StatusCode,
    pub body: String,
}

pub async fn request(socket: &Path, method: Method, path: &str, body: Option<(String, &str)>) -> Result<Response> {
    let stream = UnixStream::connect(socket).await.map_err(|err| not_running(socket, err))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.context("HTTP handshake with the daemon")?;
    tokio::spawn(connection);
    let mut builder = Request::builder().method(method).uri(path).header("host", "ferrule");
    let payload = match body {
        Some((text, source)) => {
            // A header value is visible ASCII: a path with other characters goes percent-encoded.
            let source = percent_encoding::utf8_percent_encode(source, &SOURCE_ENCODE).to_string();
            builder = builder.header(SOURCE_HEADER, source).header("content-type", "application/toml");
            text
        }
        None => String::new(),
    };
    let response = sender.send_request(builder.body(Full::new(Bytes::from(payload)))?).await?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    Ok(Response { status, body: String::from_utf8_lossy(&bytes).into_owned() })
}

/// GET a JSON document, with errors for anything but 200.
pub async fn get_json<T: serde::de::DeserializeOwned>(socket: &Path, path: &str) -> Result<(T, String)> {
    let response = request(socket, Method::GET, path, None).await?;
    if response.status != StatusCode::OK {
        return Err(anyhow!("daemon answered {} for {path}: {}", response.status, response.body.trim_end()));
    }
    let value = serde_json::from_str(&response.body)
        .with_context(|| format!("unexpected answer from the daemon for {path} (version mismatch?)"))?;
    Ok((value, response.body))
}

fn not_running(socket: &Path, err: std::io::Error) -> anyhow::Error {
    use std::io::ErrorKind::*;
    match err.kind() {
        NotFound | ConnectionRefused => anyhow!(
            "daemon not running (nothing listens on {}): start it with `ferrule daemon --config FILE`, \
             or pass --socket PATH if it serves another socket",
            socket.display()
        ),
        PermissionDenied => {
            anyhow!("permission denied on {}: the API socket is root-only (mode 0600); run as root", socket.display())
        }
        _ => anyhow!("cannot connect to {}: {err}", socket.display()),
    }
}

/// `ferrule apply --config FILE`: sends the file; prints the daemon's errors and exits 2 when it
/// rejects it (the running config stays as it was).
/// `ferrule shutdown`: asks the daemon for an orderly stop (not a graceful restart).
pub async fn shutdown(args: ClientArgs) -> Result<Done> {
    let response = request(&args.socket, Method::POST, "/v1/shutdown", None).await?;
    match response.status {
        StatusCode::ACCEPTED | StatusCode::OK => {
            if args.json {
                println!("{}", response.body.trim_end());
            } else {
                println!("shutting down: withdrawing routes from every BGP peer and removing kernel routes");
            }
            Ok(Done::Ok)
        }
        other => Err(anyhow!("daemon answered {other}: {}", response.body.trim_end())),
    }
}

pub async fn apply(config: PathBuf, args: ClientArgs) -> Result<Done> {
    let text =
        std::fs::read_to_string(&config).with_context(|| format!("cannot read config file {}", config.display()))?;
    let source = config.display().to_string();
    let response = request(&args.socket, Method::PUT, "/v1/config", Some((text, &source))).await?;
    match response.status {
        StatusCode::OK => {
            if args.json {
                println!("{}", response.body.trim_end());
            } else {
                let v: serde_json::Value = serde_json::from_str(&response.body)?;
                println!(
                    "{}: generation {}: {}",
                    v["result"].as_str().unwrap_or("?"),
                    v["generation"],
                    v["summary"].as_str().unwrap_or("")
                );
            }
            Ok(Done::Ok)
        }
        StatusCode::BAD_REQUEST | StatusCode::CONFLICT => {
            if args.json {
                let errors: Vec<&str> = response.body.lines().collect();
                println!("{}", serde_json::json!({ "result": "rejected", "errors": errors }));
            } else {
                eprintln!("{}", response.body.trim_end());
                eprintln!("rejected: the running config is unchanged");
            }
            Ok(Done::Rejected)
        }
        StatusCode::PAYLOAD_TOO_LARGE => Err(anyhow!(
            "the daemon's API takes configs up to 2 MiB and this one is larger; start the daemon with --config FILE, \
             or change the file it was started with and send it SIGHUP"
        )),
        other => Err(anyhow!("daemon answered {other}: {}", response.body.trim_end())),
    }
}
