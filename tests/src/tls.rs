//! Real TLS listeners for tests: a CA and a server certificate generated per test, a `redis-server` of
//! its own with only a TLS port, and a TLS listener opened on the local RabbitMQ node at run time (and
//! closed again when dropped), so no service has to be restarted.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A CA and a server certificate for 127.0.0.1 and localhost it signed, written as PEM files readable
/// by the services (RabbitMQ runs as its own user).
#[derive(Debug)]
pub struct TestCa {
    dir: tempfile::TempDir,
}

impl TestCa {
    /// Generates the CA and the server certificate.
    ///
    /// # Panics
    /// When generation or writing fails (a broken test machine).
    pub fn generate(name: &str) -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate().unwrap();
        let mut server_params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        server_params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        server_params
            .distinguished_name
            .push(DnType::CommonName, "127.0.0.1");
        let server = server_params.signed_by(&server_key, &issuer).unwrap();

        let this = Self { dir };
        this.write("ca.pem", &ca.pem());
        this.write("server.pem", &server.pem());
        this.write("server.key", &server_key.serialize_pem());
        this
    }

    fn write(&self, name: &str, contents: &str) {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }

    /// The CA certificate (what `TLS_CA_FILE` should name).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn server_files(&self) -> (PathBuf, PathBuf) {
        (
            self.dir.path().join("server.pem"),
            self.dir.path().join("server.key"),
        )
    }
}

/// A port nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `redis-server` that only speaks TLS, on a port of its own; stopped when dropped.
#[derive(Debug)]
pub struct RedisTls {
    /// Its TLS port.
    pub port: u16,
    child: Child,
}

impl RedisTls {
    /// Starts it with `ca`'s server certificate (clients are not asked for certificates).
    ///
    /// # Panics
    /// When `redis-server` cannot start.
    pub fn start(ca: &TestCa) -> Self {
        let port = free_port();
        let (cert, key) = ca.server_files();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .arg("--tls-cert-file")
            .arg(&cert)
            .arg("--tls-key-file")
            .arg(&key)
            .arg("--tls-ca-cert-file")
            .arg(ca.ca_file())
            .args([
                "--tls-auth-clients",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
                "--bind",
                "127.0.0.1",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        wait_for_port(port);
        Self { port, child }
    }

    /// `rediss://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for RedisTls {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TLS listener on the local RabbitMQ node, opened for one test; closed when dropped.
#[derive(Debug)]
pub struct RabbitTls {
    /// Its port.
    pub port: u16,
}

impl RabbitTls {
    /// Opens it with `ca`'s server certificate.
    ///
    /// # Panics
    /// When `rabbitmqctl` refuses.
    pub fn start(ca: &TestCa) -> Self {
        let port = free_port();
        let (cert, key) = ca.server_files();
        let options = format!(
            "[{{cacertfile,{ca:?}}},{{certfile,{cert:?}}},{{keyfile,{key:?}}},{{verify,verify_none}},\
             {{fail_if_no_peer_cert,false}}]",
            ca = path(&ca.ca_file()),
            cert = path(&cert),
            key = path(&key),
        );
        let expression = format!(
            "application:ensure_all_started(ssl), \
             rabbit_networking:start_ssl_listener({port}, {options}, 2, 1)."
        );
        let output = Command::new("rabbitmqctl")
            .args(["-q", "eval", &expression])
            .output()
            .expect("rabbitmqctl runs");
        assert!(
            output.status.success() && String::from_utf8_lossy(&output.stdout).contains("ok"),
            "RabbitMQ did not open a TLS listener: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        wait_for_port(port);
        Self { port }
    }

    /// `amqps://guest:guest@127.0.0.1:PORT/%2f`.
    pub fn url(&self) -> String {
        format!("amqps://guest:guest@127.0.0.1:{}/%2f", self.port)
    }
}

impl Drop for RabbitTls {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args([
                "-q",
                "eval",
                &format!("rabbit_networking:stop_tcp_listener({}).", self.port),
            ])
            .output();
    }
}

fn path(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}
