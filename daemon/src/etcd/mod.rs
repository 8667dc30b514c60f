//! A small etcd v3 client: the calls fleet mode makes (range, put, delete and txn on keys, a
//! watch on a prefix, a lease with its keep-alive, and a login) and nothing else.
//!
//! It speaks gRPC through tonic with the API code in `etcdserverpb.rs`, which is generated from
//! `daemon/proto/etcd.proto` once and committed. Building switchback therefore needs no protoc;
//! the test below regenerates the code where protoc is installed and fails when it drifted.
//!
//! With a username, the client logs in at connect and sends etcd's token with every call. A
//! token that etcd no longer knows (it expires, or etcd restarted) is renewed once and the call
//! made again, so a long session does not break on it.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
#[rustfmt::skip]
mod etcdserverpb;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Status, Streaming};

use etcdserverpb::auth_client::AuthClient;
use etcdserverpb::kv_client::KvClient;
use etcdserverpb::lease_client::LeaseClient;
use etcdserverpb::watch_client::WatchClient;
pub use etcdserverpb::{
    compare, event, request_op, response_op, Compare, Event, KeyValue, LeaseKeepAliveResponse,
    RangeResponse, RequestOp, ResponseHeader, ResponseOp, TxnResponse, WatchResponse,
};
use etcdserverpb::{
    AuthenticateRequest, DeleteRangeRequest, LeaseGrantRequest, LeaseKeepAliveRequest,
    LeaseRevokeRequest, PutRequest, RangeRequest, TxnRequest, WatchCreateRequest, WatchRequest,
};

/// A failed call: etcd's own message when it answered, the transport's when it did not.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("{}", .0.message())]
    Status(#[from] Status),
    #[error("{0}")]
    Config(String),
}

/// How to reach etcd: timeouts, HTTP/2 keep-alive, TLS and a login.
#[derive(Clone, Default)]
pub struct ConnectOptions {
    pub connect_timeout: Option<Duration>,
    /// HTTP/2 pings: their interval and how long an answer may take.
    pub keep_alive: Option<(Duration, Duration)>,
    pub tls: Option<TlsOptions>,
    pub user: Option<(String, String)>,
}

/// The CA that signs etcd's certificate, and the client's own for mutual TLS, both PEM.
#[derive(Clone, Default)]
pub struct TlsOptions {
    pub ca: Option<Vec<u8>>,
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// A connection to the etcd cluster, cheap to clone: clones share the channel and the token.
#[derive(Clone)]
pub struct Client {
    channel: Channel,
    user: Option<(String, String)>,
    token: Arc<RwLock<Option<MetadataValue<tonic::metadata::Ascii>>>>,
}

/// The end of a key range that holds every key starting with `prefix`, as etcdctl's
/// `--prefix` computes it: the prefix with its last byte below 0xff incremented.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte was 0xff (or the prefix was empty): the range runs to the end of the keys.
    vec![0]
}

impl Client {
    /// Connects to `endpoints` (`http://host:port` or `https://host:port`), and logs in when
    /// the options carry a user.
    pub async fn connect(endpoints: &[String], options: ConnectOptions) -> Result<Client, Error> {
        let mut list = Vec::with_capacity(endpoints.len());
        for url in endpoints {
            let mut endpoint = Endpoint::from_shared(url.clone())
                .map_err(|e| Error::Config(format!("{url}: {e}")))?;
            if let Some(timeout) = options.connect_timeout {
                endpoint = endpoint.connect_timeout(timeout);
            }
            if let Some((interval, timeout)) = options.keep_alive {
                endpoint = endpoint
                    .http2_keep_alive_interval(interval)
                    .keep_alive_timeout(timeout)
                    .keep_alive_while_idle(true);
            }
            if let Some(tls) = &options.tls {
                let mut config = ClientTlsConfig::new();
                if let Some(ca) = &tls.ca {
                    config = config.ca_certificate(Certificate::from_pem(ca));
                }
                if let Some((cert, key)) = &tls.identity {
                    config = config.identity(Identity::from_pem(cert, key));
                }
                endpoint = endpoint.tls_config(config)?;
            }
            list.push(endpoint);
        }
        let channel = match list.len() {
            0 => return Err(Error::Config("no etcd endpoint".into())),
            // One endpoint is connected now, so that an unreachable etcd says so at once.
            1 => list.remove(0).connect().await?,
            _ => Channel::balance_list(list.into_iter()),
        };
        let client = Client {
            channel,
            user: options.user,
            token: Arc::new(RwLock::new(None)),
        };
        if client.user.is_some() {
            client.login().await?;
        }
        Ok(client)
    }

    async fn login(&self) -> Result<(), Error> {
        let Some((name, password)) = self.user.clone() else {
            return Ok(());
        };
        let reply = AuthClient::new(self.channel.clone())
            .authenticate(AuthenticateRequest { name, password })
            .await?
            .into_inner();
        let token = MetadataValue::try_from(reply.token.as_str())
            .map_err(|e| Error::Config(format!("etcd's auth token: {e}")))?;
        *self.token.write().unwrap_or_else(|e| e.into_inner()) = Some(token);
        Ok(())
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(token) = &*self.token.read().unwrap_or_else(|e| e.into_inner()) {
            request.metadata_mut().insert("token", token.clone());
        }
        request
    }

    /// Makes a unary call, renewing the login once when etcd refused the token.
    async fn unary<M: Clone, R, F, Fut>(&self, message: M, call: F) -> Result<R, Error>
    where
        F: Fn(Channel, Request<M>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<R>, Status>>,
    {
        match call(self.channel.clone(), self.request(message.clone())).await {
            Err(status) if self.user.is_some() && token_refused(&status) => {
                self.login().await?;
                Ok(call(self.channel.clone(), self.request(message))
                    .await?
                    .into_inner())
            }
            other => Ok(other?.into_inner()),
        }
    }

    /// The value of `key`, or with `prefix` every key under it, in key order.
    pub async fn get(&self, key: &str, prefix: bool) -> Result<RangeResponse, Error> {
        let range = range_request(key, prefix);
        self.unary(range, |c, r| async move { KvClient::new(c).range(r).await })
            .await
    }

    /// Writes `key`, under `lease` when it is not 0.
    pub async fn put(&self, key: &str, value: Vec<u8>, lease: i64) -> Result<(), Error> {
        let put = PutRequest {
            key: key.into(),
            value,
            lease,
        };
        self.unary(put, |c, r| async move { KvClient::new(c).put(r).await })
            .await
            .map(drop)
    }

    pub async fn delete(&self, key: &str) -> Result<(), Error> {
        let delete = DeleteRangeRequest {
            key: key.into(),
            range_end: Vec::new(),
        };
        self.unary(delete, |c, r| async move {
            KvClient::new(c).delete_range(r).await
        })
        .await
        .map(drop)
    }

    /// Runs `success` when every comparison holds, `failure` otherwise, as one revision.
    pub async fn txn(
        &self,
        compare: Vec<Compare>,
        success: Vec<RequestOp>,
        failure: Vec<RequestOp>,
    ) -> Result<TxnResponse, Error> {
        let txn = TxnRequest {
            compare,
            success,
            failure,
        };
        self.unary(txn, |c, r| async move { KvClient::new(c).txn(r).await })
            .await
    }

    /// A new lease of `ttl` seconds: its ID.
    pub async fn lease_grant(&self, ttl: i64) -> Result<i64, Error> {
        let grant = LeaseGrantRequest { ttl, id: 0 };
        let reply = self
            .unary(grant, |c, r| async move {
                LeaseClient::new(c).lease_grant(r).await
            })
            .await?;
        if !reply.error.is_empty() {
            return Err(Error::Config(reply.error));
        }
        Ok(reply.id)
    }

    pub async fn lease_revoke(&self, id: i64) -> Result<(), Error> {
        let revoke = LeaseRevokeRequest { id };
        self.unary(revoke, |c, r| async move {
            LeaseClient::new(c).lease_revoke(r).await
        })
        .await
        .map(drop)
    }

    /// Opens the keep-alive stream of lease `id`: [`LeaseKeeper::keep_alive`] sends one, and
    /// the stream yields etcd's answers (a TTL of 0 means the lease is gone).
    pub async fn lease_keep_alive(
        &self,
        id: i64,
    ) -> Result<(LeaseKeeper, Streaming<LeaseKeepAliveResponse>), Error> {
        let (sender, receiver) = tokio::sync::mpsc::channel(4);
        // etcd answers the call (its headers) only with its first keep-alive answer, so the
        // first keep-alive goes out with it.
        sender
            .send(LeaseKeepAliveRequest { id })
            .await
            .map_err(|_| Error::Config("the lease's keep-alive stream ended".into()))?;
        let requests = futures_util::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|request| (request, receiver))
        });
        let stream = LeaseClient::new(self.channel.clone())
            .lease_keep_alive(self.request(requests))
            .await?
            .into_inner();
        Ok((LeaseKeeper { id, sender }, stream))
    }

    /// Watches `key` (with `prefix`, every key under it) from `start_revision` on.
    pub async fn watch(
        &self,
        key: &str,
        prefix: bool,
        start_revision: i64,
    ) -> Result<Streaming<WatchResponse>, Error> {
        let range = range_request(key, prefix);
        let create = WatchRequest {
            request_union: Some(etcdserverpb::watch_request::RequestUnion::CreateRequest(
                WatchCreateRequest {
                    key: range.key,
                    range_end: range.range_end,
                    start_revision,
                },
            )),
        };
        // The request side stays open: etcd ends a watch stream whose client stopped sending.
        let requests = futures_util::StreamExt::chain(
            futures_util::stream::iter([create]),
            futures_util::stream::pending(),
        );
        Ok(WatchClient::new(self.channel.clone())
            .watch(self.request(requests))
            .await?
            .into_inner())
    }
}

/// Sends keep-alives on a lease's stream.
pub struct LeaseKeeper {
    id: i64,
    sender: tokio::sync::mpsc::Sender<LeaseKeepAliveRequest>,
}

impl LeaseKeeper {
    pub async fn keep_alive(&mut self) -> Result<(), Error> {
        self.sender
            .send(LeaseKeepAliveRequest { id: self.id })
            .await
            .map_err(|_| Error::Config("the lease's keep-alive stream ended".into()))
    }
}

/// etcd refuses an unknown or expired token with `Unauthenticated` ("invalid auth token");
/// a wrong password is `InvalidArgument`, which a new login would not cure.
fn token_refused(status: &Status) -> bool {
    status.code() == Code::Unauthenticated
}

fn range_request(key: &str, prefix: bool) -> RangeRequest {
    RangeRequest {
        key: key.into(),
        range_end: if prefix {
            prefix_end(key.as_bytes())
        } else {
            Vec::new()
        },
        limit: 0,
        revision: 0,
    }
}

/// The comparisons a transaction can make, as etcd's `clientv3.Compare` builds them.
impl Compare {
    fn on(key: &str, target: compare::CompareTarget, union: compare::TargetUnion) -> Compare {
        Compare {
            result: compare::CompareResult::Equal as i32,
            target: target as i32,
            key: key.into(),
            target_union: Some(union),
        }
    }

    /// `key`'s last change was at `revision`.
    pub fn mod_revision_is(key: &str, revision: i64) -> Compare {
        Compare::on(
            key,
            compare::CompareTarget::Mod,
            compare::TargetUnion::ModRevision(revision),
        )
    }

    /// `key` was created at `revision`; 0 means it does not exist.
    pub fn create_revision_is(key: &str, revision: i64) -> Compare {
        Compare::on(
            key,
            compare::CompareTarget::Create,
            compare::TargetUnion::CreateRevision(revision),
        )
    }

    pub fn value_is(key: &str, value: &[u8]) -> Compare {
        Compare::on(
            key,
            compare::CompareTarget::Value,
            compare::TargetUnion::Value(value.to_vec()),
        )
    }

    /// `key` is held under lease `lease`.
    pub fn lease_is(key: &str, lease: i64) -> Compare {
        Compare::on(
            key,
            compare::CompareTarget::Lease,
            compare::TargetUnion::Lease(lease),
        )
    }
}

/// The operations of a transaction.
impl RequestOp {
    pub fn put(key: &str, value: Vec<u8>, lease: i64) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: key.into(),
                value,
                lease,
            })),
        }
    }

    pub fn get(key: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestRange(range_request(key, false))),
        }
    }

    pub fn delete(key: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(
                DeleteRangeRequest {
                    key: key.into(),
                    range_end: Vec::new(),
                },
            )),
        }
    }
}

impl TxnResponse {
    /// The key-values the first range (get) operation of the branch that ran read.
    pub fn first_range(&self) -> Option<&[KeyValue]> {
        self.responses.iter().find_map(|r| match &r.response {
            Some(response_op::Response::ResponseRange(range)) => Some(&range.kvs[..]),
            _ => None,
        })
    }
}

impl Event {
    pub fn is_delete(&self) -> bool {
        self.r#type == event::EventType::Delete as i32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key_after_every_key_under_the_prefix() {
        assert_eq!(prefix_end(b"/switchback/"), b"/switchback0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }

    /// Regenerates `etcdserverpb.rs` from `daemon/proto/etcd.proto` and compares it with the
    /// committed copy. It needs protoc (Debian's protobuf-compiler), which only this test does:
    /// with `SWITCHBACK_WRITE_GENERATED=1` it writes the fresh copy in place instead.
    #[test]
    fn generated_code_is_current() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = tempfile::tempdir().unwrap();
        tonic_prost_build::configure()
            .build_server(false)
            .out_dir(out.path())
            .compile_protos(&[root.join("proto/etcd.proto")], &[root.join("proto")])
            .expect("protoc (Debian's protobuf-compiler) generates the etcd API code");
        let fresh = std::fs::read_to_string(out.path().join("etcdserverpb.rs")).unwrap();
        let committed_path = root.join("src/etcd/etcdserverpb.rs");
        if std::env::var_os("SWITCHBACK_WRITE_GENERATED").is_some() {
            std::fs::write(&committed_path, &fresh).unwrap();
        }
        let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
        assert!(
            fresh == committed,
            "{} differs from what daemon/proto/etcd.proto generates: run this test with \
             SWITCHBACK_WRITE_GENERATED=1 and commit the result",
            committed_path.display()
        );
    }
}
