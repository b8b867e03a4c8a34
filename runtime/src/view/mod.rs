//! `ponder view`: one self-contained HTML page over a run directory or a sweep folder
//! (`view/index.html`: data, scripts and styles inline, nothing fetched). For a run: the report's
//! figures as interactive plots, the search-tree explorer over `search_trees.jsonl`, and RL's
//! metrics with the same held-out problems' greedy traces before and after RL, every step
//! coloured by its exact label. For a sweep: its table, sortable, and a plot per figure.
//! `--serve` serves the page on loopback.

mod data;

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde_json::Value;

use crate::registry::Registry;

const PAGE: &str = include_str!("page.html");

/// Writes `DIR/view/index.html` for a run directory or a sweep folder and returns its path.
pub fn write(dir: &Path, registry: &Registry) -> anyhow::Result<PathBuf> {
    let data = if dir.join("sweep.json").exists() {
        data::sweep(dir)?
    } else if dir.join("config.toml").exists() {
        data::run(dir, registry)?
    } else {
        anyhow::bail!(
            "{} is neither a run directory (no config.toml) nor a sweep folder (no sweep.json)",
            dir.display()
        );
    };
    let html = page(&data)?;
    let out = dir.join("view").join("index.html");
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    ponder_datagen::io::write_atomic(&out, html.as_bytes()).with_context(|| format!("writing {}", out.display()))?;
    Ok(out)
}

/// The page with `data` inline. `<` is escaped in the JSON so no text can close the script.
pub fn page(data: &Value) -> anyhow::Result<String> {
    let json = serde_json::to_string(data)?.replace('<', "\\u003c");
    Ok(PAGE.replacen("/*PONDER-DATA*/null", &json, 1))
}

/// Writes the page, then serves it on `host:port` until Ctrl-C or SIGTERM.
pub async fn serve(dir: &Path, registry: &Registry, host: &str, port: u16) -> anyhow::Result<()> {
    let path = write(dir, registry)?;
    let html = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(move || {
            let html = html.clone();
            async move { axum::response::Html(html) }
        }),
    );
    let listener = tokio::net::TcpListener::bind((host, port))
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {host}:{port}: {e}"))?;
    eprintln!(
        "ponder: viewing {} on http://{}/",
        dir.display(),
        listener.local_addr()?
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(crate::serve::shutdown_signal())
        .await?;
    Ok(())
}
