//! Wi-Fi station, the network stack, and connections to the server: plain TCP for `http://`
//! servers, TLS 1.3 (embedded-tls) for `https://`, with the server's certificate checked
//! against the CA compiled in (`CONCLAVE_TLS_CA`) and its host name. With no CA compiled in,
//! `https://` is refused rather than spoken unverified.

use alloc::boxed::Box;
use alloc::vec;
use conclave_device_core::backoff::Backoff;
use conclave_device_core::endpoint::Endpoint;
use embassy_net::dns::DnsQueryType;
use embassy_net::tcp::TcpSocket;
use embassy_net::{Runner, Stack};
use embassy_time::{Duration, Timer};
use embedded_io_async::{Read, Write};
use embedded_tls::pki::CertVerifier;
use embedded_tls::{
    Aes128GcmSha256, Certificate, CryptoProvider, TlsClock, TlsConfig, TlsConnection, TlsContext,
    TlsError, TlsVerifier,
};
use esp_radio::wifi::{Interface, WifiController};

/// The CA that signs the server's certificate (DER; empty when none was compiled in).
static TLS_CA: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tls_ca.der"));

#[embassy_executor::task]
pub async fn net_task(mut runner: Runner<'static, Interface>) -> ! {
    runner.run().await
}

/// Keeps the station associated: reconnects with backoff whenever the access point goes.
#[embassy_executor::task]
pub async fn wifi_task(mut controller: WifiController<'static>) {
    let mut backoff = Backoff::new(1_000, 60_000);
    loop {
        match controller.connect_async().await {
            Ok(_) => {
                log::info!("wifi: associated");
                backoff.reset();
                let gone = controller.wait_for_disconnect_async().await;
                log::warn!("wifi: disconnected ({gone:?})");
            }
            Err(e) => log::warn!("wifi: cannot associate ({e:?})"),
        }
        let delay = backoff.next_delay_ms(esp_hal::rng::Rng::new().random());
        Timer::after(Duration::from_millis(u64::from(delay))).await;
    }
}

#[derive(Debug)]
pub enum NetError {
    Dns,
    Connect,
    Io,
    /// `https://` without a CA compiled in.
    NoCa,
    Tls(TlsError),
    Closed,
}

impl core::fmt::Display for NetError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Dns => f.write_str("cannot resolve the server's name"),
            Self::Connect => f.write_str("cannot connect to the server"),
            Self::Io => f.write_str("the connection failed"),
            Self::NoCa => f.write_str(
                "https:// needs the server's CA compiled in (CONCLAVE_TLS_CA); none was",
            ),
            Self::Tls(e) => write!(f, "TLS: {e:?}"),
            Self::Closed => f.write_str("the server closed the connection"),
        }
    }
}

impl core::error::Error for NetError {}

impl embedded_io::Error for NetError {
    fn kind(&self) -> embedded_io::ErrorKind {
        embedded_io::ErrorKind::Other
    }
}

/// The device's idea of the time for certificate validity: the server's clock from the last
/// `welcome` (before the first one, validity dates are not checked).
pub struct DeviceClock;

impl TlsClock for DeviceClock {
    fn now() -> Option<u64> {
        crate::clock::unix_ms().map(|ms| ms / 1_000)
    }
}

struct Provider {
    rng: esp_hal::rng::Trng,
    verifier: CertVerifier<'static, Aes128GcmSha256, DeviceClock, 4096>,
}

impl CryptoProvider for Provider {
    type CipherSuite = Aes128GcmSha256;
    type Signature = &'static [u8];

    fn rng(&mut self) -> impl embedded_tls::CryptoRngCore {
        &mut self.rng
    }

    fn verifier(&mut self) -> Result<&mut impl TlsVerifier<Self::CipherSuite>, TlsError> {
        Ok(&mut self.verifier)
    }
}

/// TCP buffers of one connection.
pub struct Buffers {
    rx: Box<[u8]>,
    tx: Box<[u8]>,
    tls_rx: Box<[u8]>,
    tls_tx: Box<[u8]>,
}

impl Buffers {
    /// On the heap, so a task's future stays small; TLS records are up to 16 KiB + overhead.
    pub fn new(tls: bool) -> Self {
        let (tls_rx, tls_tx) = if tls { (16_640, 4_096) } else { (0, 0) };
        Self {
            rx: vec![0; 4_096].into_boxed_slice(),
            tx: vec![0; 2_048].into_boxed_slice(),
            tls_rx: vec![0; tls_rx].into_boxed_slice(),
            tls_tx: vec![0; tls_tx].into_boxed_slice(),
        }
    }
}

/// A connection to the server, plain or TLS.
pub enum Conn<'a> {
    Plain(TcpSocket<'a>),
    Tls(Box<TlsConnection<'a, TcpSocket<'a>, Aes128GcmSha256>>),
}

impl<'a> Conn<'a> {
    pub async fn open(
        stack: Stack<'static>,
        endpoint: &Endpoint,
        buffers: &'a mut Buffers,
    ) -> Result<Self, NetError> {
        if endpoint.tls && TLS_CA.is_empty() {
            return Err(NetError::NoCa);
        }
        let address = stack
            .dns_query(endpoint.host.as_str(), DnsQueryType::A)
            .await
            .ok()
            .and_then(|found| found.first().copied())
            .ok_or(NetError::Dns)?;
        let mut socket = TcpSocket::new(stack, &mut buffers.rx, &mut buffers.tx);
        socket.set_timeout(Some(Duration::from_secs(90)));
        socket.set_keep_alive(Some(Duration::from_secs(30)));
        socket
            .connect((address, endpoint.port))
            .await
            .map_err(|_| NetError::Connect)?;
        if !endpoint.tls {
            return Ok(Self::Plain(socket));
        }
        let mut tls = Box::new(TlsConnection::new(
            socket,
            &mut buffers.tls_rx,
            &mut buffers.tls_tx,
        ));
        let config = TlsConfig::new().with_server_name(endpoint.host.as_str());
        let rng =
            esp_hal::rng::Trng::try_new().map_err(|_| NetError::Tls(TlsError::InternalError))?;
        let provider = Provider {
            rng,
            verifier: CertVerifier::new(Certificate::X509(TLS_CA)),
        };
        tls.open(TlsContext::new(&config, provider))
            .await
            .map_err(NetError::Tls)?;
        Ok(Self::Tls(tls))
    }

    pub async fn close(self) {
        match self {
            Self::Plain(mut socket) => {
                socket.close();
                let _ = socket.flush().await;
            }
            Self::Tls(tls) => {
                if let Ok(mut socket) = tls.close().await {
                    socket.close();
                    let _ = socket.flush().await;
                }
            }
        }
    }
}

impl embedded_io::ErrorType for Conn<'_> {
    type Error = NetError;
}

impl Read for Conn<'_> {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, NetError> {
        match self {
            Self::Plain(socket) => socket.read(buf).await.map_err(|_| NetError::Io),
            Self::Tls(tls) => tls.read(buf).await.map_err(NetError::Tls),
        }
    }
}

impl Write for Conn<'_> {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, NetError> {
        match self {
            Self::Plain(socket) => socket.write(buf).await.map_err(|_| NetError::Io),
            Self::Tls(tls) => tls.write(buf).await.map_err(NetError::Tls),
        }
    }

    async fn flush(&mut self) -> Result<(), NetError> {
        match self {
            Self::Plain(socket) => socket.flush().await.map_err(|_| NetError::Io),
            Self::Tls(tls) => tls.flush().await.map_err(NetError::Tls),
        }
    }
}
