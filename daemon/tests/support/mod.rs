//! A controller in process: a config in a temporary dir, its state dir, and the handler on top.
//! No proxy, no sockets: the control plane alone, so tests can use tokio's paused time.

#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use switchback_config::Config;
use switchback_control::{
    Caller, ControlError, ErrorCode, Event, Handler, Progress, Reply, Request,
};
use switchback_daemon::{ControlHandler, Controller};
use switchback_proxy::Metrics;

pub const BLUE: &str = "127.0.0.1:9001";
pub const GREEN: &str = "127.0.0.1:9002";

/// The config of one service `app` with pools blue and green, plus `extra` TOML.
pub fn config(dir: &Path, extra: &str) -> Config {
    switchback_config::parse(&dir.join("switchback.toml"), &config_text(dir, extra))
        .expect("a valid test config")
}

/// The text of [`config`].
pub fn config_text(dir: &Path, extra: &str) -> String {
    let d = dir.display();
    let https = if extra.contains("tls =") {
        "https = [\"127.0.0.1:2\"]\n"
    } else {
        ""
    };
    format!(
        "[listen]\nhttp = [\"127.0.0.1:1\"]\n{https}[control]\nsocket = \"{d}/control.sock\"\n[state]\ndir = \"{d}/state\"\n\
         [services.app]\nactive = \"blue\"\npools.blue = [\"{BLUE}\"]\npools.green = [\"{GREEN}\"]\n{extra}"
    )
}

pub struct Plane {
    pub dir: tempfile::TempDir,
    pub controller: Arc<Controller>,
    pub handler: ControlHandler,
}

impl Plane {
    pub fn new(extra: &str) -> Plane {
        Self::with_certs(extra, |_| None)
    }

    pub fn with_certs(
        extra: &str,
        certs: impl FnOnce(&Config) -> Option<Arc<switchback_certs::CertManager>>,
    ) -> Plane {
        let dir = tempfile::tempdir().unwrap();
        let extra = extra.replace("{dir}", &dir.path().display().to_string());
        let config = config(dir.path(), &extra);
        let certs = certs(&config);
        let controller = Arc::new(
            Controller::start(Arc::new(config), Arc::new(Metrics::new(true)))
                .expect("the controller starts on a fresh state dir"),
        );
        let handler = ControlHandler::new(controller.clone(), certs);
        Plane {
            dir,
            controller,
            handler,
        }
    }

    /// Writes the config file the controller runs from (which a test plane never reads
    /// itself), with `extra` TOML: what `reload` reads.
    pub fn write_config(&self, extra: &str) {
        std::fs::write(
            self.dir.path().join("switchback.toml"),
            config_text(self.dir.path(), extra),
        )
        .unwrap();
    }

    /// Marks a backend as having passed (or failed) its health check, as the checker would.
    pub fn set_health(&self, service: &str, addr: &str, healthy: bool) {
        let state = self
            .controller
            .registry()
            .get(service, addr.parse().unwrap(), true);
        let result = if healthy { Ok(()) } else { Err("status 503") };
        state.observe(result, 1, 1);
    }

    pub async fn ask(&self, request: Request) -> Result<Reply, ControlError> {
        self.handler
            .handle(request, Caller::default(), Progress::discard())
            .await
    }

    /// The request's answer and the events sent before it.
    pub async fn ask_with_events(
        &self,
        request: Request,
    ) -> (Result<Reply, ControlError>, Vec<Event>) {
        let (progress, mut rx) = Progress::channel();
        let reply = self
            .handler
            .handle(request, Caller::default(), progress)
            .await;
        let mut events = Vec::new();
        while let Ok(e) = rx.try_recv() {
            events.push(e);
        }
        (reply, events)
    }

    /// Asks, expects a refusal with `code`, and checks that nothing changed.
    pub async fn refused(&self, request: Request, code: ErrorCode) -> ControlError {
        let before = self.controller.live_state().await;
        let what = format!("{request:?}");
        let err = self
            .ask(request)
            .await
            .expect_err(&format!("{what} should be refused with {code:?}"));
        assert_eq!(err.code, code, "{what}: {}", err.message);
        assert!(!err.message.is_empty());
        assert_eq!(
            self.controller.live_state().await,
            before,
            "{what} was refused but changed the live state"
        );
        err
    }
}
