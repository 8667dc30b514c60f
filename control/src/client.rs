//! The control socket's client side, used by the CLI and by anything else written in Rust.
//!
//! One connection can carry many requests, one after another. Progress events are handed to a
//! callback as they arrive; the final line becomes the typed reply or a [`ControlError`].

use std::io;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

use crate::protocol::*;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the control socket {}: {source} (is switchback running? pass --socket or set SWITCHBACK_SOCKET)", path.display())]
    Connect { path: PathBuf, source: io::Error },
    #[error("control socket: {0}")]
    Io(#[from] io::Error),
    #[error("control socket: {0}")]
    Protocol(String),
    /// The server understood the request and refused it.
    #[error("{}: {}", .0.code.as_str(), .0.message)]
    Refused(ControlError),
}

pub struct Client {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Client {
    pub async fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| ClientError::Connect {
                path: path.to_path_buf(),
                source,
            })?;
        let (r, w) = stream.into_split();
        Ok(Client {
            reader: BufReader::new(r),
            writer: w,
        })
    }

    /// Sends one request and waits for its final answer, passing progress events to
    /// `on_event` as they come.
    pub async fn call<T: DeserializeOwned>(
        &mut self,
        request: &Request,
        mut on_event: impl FnMut(&Event),
    ) -> Result<T, ClientError> {
        let mut line =
            serde_json::to_string(request).map_err(|e| ClientError::Protocol(e.to_string()))?;
        line.push('\n');
        self.writer.write_all(line.as_bytes()).await?;
        loop {
            let mut buf = String::new();
            if self.reader.read_line(&mut buf).await? == 0 {
                return Err(ClientError::Protocol(
                    "the server closed the connection before answering".into(),
                ));
            }
            match decode_server_line(buf.trim_end()).map_err(ClientError::Protocol)? {
                ServerLine::Event(e) => on_event(&e),
                ServerLine::Err(e) => return Err(ClientError::Refused(e)),
                ServerLine::Ok(map) => {
                    return serde_json::from_value(serde_json::Value::Object(map)).map_err(|e| {
                        ClientError::Protocol(format!("unexpected answer shape: {e}"))
                    })
                }
            }
        }
    }
}
