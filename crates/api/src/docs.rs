//! `/docs`: a self-contained page that renders the served OpenAPI document (no downloads at
//! build or run time), and `/openapi.json` as a short alias.

use axum::response::Html;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::Value;

pub fn router() -> Router {
    Router::new().route("/docs", get(page)).route(
        "/openapi.json",
        get(|| async { Json::<Value>(crate::bluelobster::openapi::served().clone()) }),
    )
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

const PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Lobster API</title>
<style>
body{font:15px/1.45 system-ui,sans-serif;margin:0;color:#1d232a;background:#f7f8fa}
header{background:#0b2540;color:#fff;padding:18px 28px}header h1{margin:0;font-size:22px}
main{max-width:1000px;margin:0 auto;padding:20px}
details{background:#fff;border:1px solid #dde1e6;border-radius:6px;margin:8px 0}
summary{cursor:pointer;padding:10px 14px;font-family:ui-monospace,monospace}
.m{display:inline-block;min-width:64px;font-weight:700}.get{color:#1565c0}.post{color:#2e7d32}.put{color:#ef6c00}.delete{color:#c62828}
.body{padding:0 16px 12px;white-space:pre-wrap}code,pre{font-family:ui-monospace,monospace;font-size:13px}
pre{background:#f1f3f5;padding:8px;border-radius:4px;overflow:auto}
</style></head><body>
<header><h1>Lobster API</h1><div>Blue Lobster v1 at <code>/api/v1</code> &middot; authenticate with <code>X-API-Key</code> &middot; <a style="color:#9cf" href="/api/v1/openapi.json">openapi.json</a></div></header>
<main id="ops">Loading…</main>
<script>
fetch('/api/v1/openapi.json').then(r=>r.json()).then(doc=>{
  const main=document.getElementById('ops');main.textContent='';
  const esc=s=>String(s??'').replace(/[&<>]/g,c=>({'&':'&amp;','<':'&lt;','>':'&gt;'}[c]));
  for(const [path,item] of Object.entries(doc.paths)){
    for(const [method,op] of Object.entries(item)){
      const d=document.createElement('details');
      const params=(op.parameters||[]).filter(p=>!p.name.startsWith('_')).map(p=>`${p.name} (${p.in}${p.required?', required':''})`).join(', ');
      const body=op.requestBody?JSON.stringify(op.requestBody.content['application/json'].schema):'';
      d.innerHTML=`<summary><span class="m ${method}">${method.toUpperCase()}</span>${esc(path)} — ${esc(op.summary)}</summary>`+
        `<div class="body">${esc(op.description)}${params?'\n\nParameters: '+esc(params):''}${body?'\n\nBody: <code>'+esc(body)+'</code>':''}\n\nResponses: ${Object.keys(op.responses).join(', ')}</div>`;
      main.appendChild(d);
    }
  }
});
</script></body></html>"#;
