//! A small W3C WebDriver client over reqwest, driving Debian's `chromium` through
//! `chromedriver` (both installed by `tests/run`): enough to sign in, fill forms, click, read
//! pages and take screenshots the way a person at a browser would.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

/// The key WebDriver names an element reference with.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    driver: Child,
    http: reqwest::Client,
    session: String,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    /// Ends the WebDriver session first (that is what closes Chromium: killing chromedriver
    /// alone leaves its headless browser running after the suite), then stops chromedriver.
    /// Drop cannot await, so the DELETE goes over a plain blocking socket.
    fn drop(&mut self) {
        if let Some((address, path)) = self.session.strip_prefix("http://").and_then(|rest| rest.split_once('/'))
            && let Ok(mut stream) = std::net::TcpStream::connect(address)
        {
            use std::io::{Read as _, Write as _};
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let request =
                format!("DELETE /{path} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            if stream.write_all(request.as_bytes()).is_ok() {
                let _ = stream.read_to_end(&mut Vec::new());
            }
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("address").port()
}

impl Browser {
    /// Starts chromedriver and a headless Chromium window of `width` x `height`. The server's
    /// dev certificate is not in the browser's trust store, so certificate errors are
    /// accepted (the HTTP client tests check TLS itself).
    pub async fn start(width: u32, height: u32) -> Browser {
        let chromedriver = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("chromedriver is not installed: `apt-get install chromium chromium-driver` (tests/run does it)");
        let port = free_port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let http = reqwest::Client::builder().timeout(Duration::from_secs(120)).build().expect("client");
        let base = format!("http://127.0.0.1:{port}");
        let mut ready = false;
        for _ in 0..100 {
            if let Ok(reply) = http.get(format!("{base}/status")).send().await
                && let Ok(status) = reply.json::<Value>().await
                && status["value"]["ready"] == true
            {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ready, "chromedriver did not become ready on port {port}");
        let profile = tempfile::tempdir().expect("browser profile dir");
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         format!("--window-size={width},{height}"), format!("--user-data-dir={}", profile.path().display())],
            },
        }}});
        let reply: Value = http
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .expect("session JSON");
        let session = reply["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {reply}")).to_owned();
        let mut browser = Browser { driver, http, session: format!("{base}/session/{session}"), _profile: profile };
        browser.resize(width, height).await;
        browser
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        match self.try_command(method.clone(), path, body).await {
            Ok(value) => value,
            Err(error) => panic!("webdriver {method} {path}: {error}"),
        }
    }

    async fn try_command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value, String> {
        let mut request = self.http.request(method.clone(), format!("{}{path}", self.session));
        if let Some(body) = body {
            request = request.json(&body);
        } else if method == reqwest::Method::POST {
            request = request.json(&json!({}));
        }
        let reply: Value = request.send().await.expect("webdriver request").json().await.expect("webdriver JSON");
        match reply["value"]["error"].as_str() {
            Some(error) => Err(format!("{error}: {}", reply["value"]["message"])),
            None => Ok(reply["value"].clone()),
        }
    }

    /// Clicks `element`, which leads to another page, and waits until that page has loaded.
    async fn click_and_wait(&self, element: &str) {
        let root = self.find("html").await;
        self.command(reqwest::Method::POST, &format!("/element/{element}/click"), None).await;
        for _ in 0..200 {
            // The old page's root goes stale once the new page replaced it.
            if self.try_command(reqwest::Method::GET, &format!("/element/{root}/name"), None).await.is_err() {
                let ready = self.eval("return document.readyState").await;
                if ready == "complete" {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("clicking {element} led to no new page");
    }

    pub async fn resize(&mut self, width: u32, height: u32) {
        self.command(reqwest::Method::POST, "/window/rect", Some(json!({"width": width, "height": height}))).await;
    }

    pub async fn go(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", Some(json!({"url": url}))).await;
    }

    pub async fn url(&self) -> String {
        self.command(reqwest::Method::GET, "/url", None).await.as_str().unwrap_or_default().to_owned()
    }

    pub async fn source(&self) -> String {
        self.command(reqwest::Method::GET, "/source", None).await.as_str().unwrap_or_default().to_owned()
    }

    /// The visible text of the page.
    pub async fn text(&self) -> String {
        let body = self.find("body").await;
        self.command(reqwest::Method::GET, &format!("/element/{body}/text"), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The first element matching a CSS selector (panics if none).
    pub async fn find(&self, css: &str) -> String {
        let found =
            self.command(reqwest::Method::POST, "/element", Some(json!({"using": "css selector", "value": css}))).await;
        found[ELEMENT].as_str().unwrap_or_else(|| panic!("no element {css}")).to_owned()
    }

    /// Types into the element matching `css` (for a file input: the file's path).
    pub async fn fill(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        self.command(reqwest::Method::POST, &format!("/element/{element}/clear"), None).await;
        self.command(reqwest::Method::POST, &format!("/element/{element}/value"), Some(json!({"text": text}))).await;
    }

    /// Chooses a file in a file input.
    pub async fn choose_file(&self, css: &str, path: &std::path::Path) {
        let element = self.find(css).await;
        let path = path.to_str().expect("UTF-8 path");
        self.command(reqwest::Method::POST, &format!("/element/{element}/value"), Some(json!({"text": path}))).await;
    }

    /// Clicks an element that does not leave the page (e.g. an option of a select).
    pub async fn click(&self, css: &str) {
        let element = self.find(css).await;
        self.command(reqwest::Method::POST, &format!("/element/{element}/click"), None).await;
    }

    /// Clicks the link or button whose text is exactly `label`, and waits for the page it
    /// leads to.
    pub async fn click_text(&self, label: &str) {
        let xpath = format!("//a[normalize-space(.)='{label}'] | //button[normalize-space(.)='{label}']");
        let found =
            self.command(reqwest::Method::POST, "/element", Some(json!({"using": "xpath", "value": xpath}))).await;
        let element = found[ELEMENT].as_str().unwrap_or_else(|| panic!("nothing labelled {label:?}")).to_owned();
        self.click_and_wait(&element).await;
    }

    /// Presses keys (WebDriver key codes, e.g. "\u{E004}" for Tab) on the focused element.
    pub async fn press(&self, keys: &str) {
        let actions: Vec<Value> = keys
            .chars()
            .flat_map(|c| {
                [json!({"type": "keyDown", "value": c.to_string()}), json!({"type": "keyUp", "value": c.to_string()})]
            })
            .collect();
        let body = json!({"actions": [{"type": "key", "id": "keyboard", "actions": actions}]});
        self.command(reqwest::Method::POST, "/actions", Some(body)).await;
    }

    /// The text of the focused element.
    pub async fn focused_text(&self) -> String {
        let active = self.command(reqwest::Method::GET, "/element/active", None).await;
        let element = active[ELEMENT].as_str().expect("a focused element").to_owned();
        self.command(reqwest::Method::GET, &format!("/element/{element}/text"), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Runs a script in the page and returns its value.
    pub async fn eval(&self, script: &str) -> Value {
        self.command(reqwest::Method::POST, "/execute/sync", Some(json!({"script": script, "args": []}))).await
    }

    pub async fn cookies(&self) -> Vec<Value> {
        self.command(reqwest::Method::GET, "/cookie", None).await.as_array().cloned().unwrap_or_default()
    }

    pub async fn delete_cookies(&self) {
        self.command(reqwest::Method::DELETE, "/cookie", None).await;
    }

    /// A PNG of the window.
    pub async fn screenshot(&self) -> Vec<u8> {
        let data = self.command(reqwest::Method::GET, "/screenshot", None).await;
        base64::engine::general_purpose::STANDARD.decode(data.as_str().unwrap_or_default()).expect("PNG as base64")
    }
}
