//! The bundles page: download a bundle for a peer, upload one to import.

use super::*;

pub async fn bundles(State(s): State<AppState>) -> Response {
    bundles_with(&s, None, StatusCode::OK).await
}

async fn bundles_with(s: &AppState, note: Option<String>, status: StatusCode) -> Response {
    let peers = s.call(|d| d.overview()).await.map(|o| o.network).unwrap_or_default();
    let mut b = note.unwrap_or_default();
    let _ = write!(
        b,
        "<h2>Export</h2><p>A bundle carries signed batches to a node with no link: on a USB \
         stick, imported there with <code>sitesync import</code> or this page.</p>\
         <form method=\"post\" action=\"/bundles/export\">{}<label>For<select name=\"peer\">\
         <option value=\"\">any node: everything this node holds</option>",
        csrf_field(s)
    );
    for n in &peers {
        let name = n.name.clone().unwrap_or_else(|| crate::id::short(&n.node_id).to_string());
        let _ = write!(
            b,
            "<option value=\"{}\">{} ({}): what it lacks</option>",
            esc(&n.node_id),
            esc(&name),
            esc(&n.role)
        );
    }
    let _ = write!(
        b,
        "</select></label><button>Download bundle</button></form>\
         <h2>Import</h2><form method=\"post\" action=\"/bundles/import\" enctype=\"multipart/form-data\">{}\
         <label>Bundle file <input type=\"file\" name=\"bundle\" required></label>\
         <button>Import</button></form>",
        csrf_field(s)
    );
    (status, page(s, "Bundles", "/bundles", &b)).into_response()
}

pub async fn export(State(s): State<AppState>, Form(form): Form<Params>) -> Response {
    if let Some(r) = csrf_refusal(&s, &form) {
        return r;
    }
    let peer = match form.get("peer").map(|p| p.trim()).filter(|p| !p.is_empty()) {
        None => None,
        Some(p) => match p.parse::<NodeId>() {
            Ok(p) => Some(p),
            Err(_) => {
                let m = notice(false, &format!("{p:?} is not a node id"));
                return bundles_with(&s, Some(m), StatusCode::UNPROCESSABLE_ENTITY).await;
            }
        },
    };
    match s.call(move |d| d.export_bundle(peer)).await {
        Ok(bundle) => crate::web::api::download(bundle).await,
        Err(e) => bundles_with(&s, Some(notice(false, &e.to_string())), status_of(&e)).await,
    }
}

pub async fn import(State(s): State<AppState>, mut multipart: Multipart) -> Response {
    let mut csrf = None;
    let mut upload = None;
    loop {
        match multipart.next_field().await {
            Ok(Some(field)) if field.name() == Some("csrf") => csrf = field.text().await.ok(),
            Ok(Some(mut field)) if field.name() == Some("bundle") => {
                let mut sink = match crate::web::api::UploadSink::new(&s.scratch).await {
                    Ok(f) => f,
                    Err(e) => return error_page(&s, "Bundles", "/bundles", &e),
                };
                loop {
                    match field.chunk().await {
                        Ok(Some(bytes)) => {
                            if let Err(e) = sink.write(&bytes).await {
                                return bundles_with(
                                    &s,
                                    Some(notice(false, &e.to_string())),
                                    status_of(&e),
                                )
                                .await;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            let m = notice(false, &format!("the upload broke off: {e}"));
                            return bundles_with(&s, Some(m), StatusCode::BAD_REQUEST).await;
                        }
                    }
                }
                upload = Some(sink);
            }
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) => {
                let m = notice(false, &format!("the upload could not be read: {e}"));
                return bundles_with(&s, Some(m), StatusCode::BAD_REQUEST).await;
            }
        }
    }
    let mut form = Params::new();
    if let Some(c) = csrf {
        form.insert("csrf".into(), c);
    }
    if let Some(r) = csrf_refusal(&s, &form) {
        return r;
    }
    let Some(upload) = upload.filter(|u| u.bytes > 0) else {
        let m = notice(false, "Choose a bundle file to import. Nothing was changed.");
        return bundles_with(&s, Some(m), StatusCode::UNPROCESSABLE_ENTITY).await;
    };
    let path = match upload.finish().await {
        Ok(p) => p,
        Err(e) => return error_page(&s, "Bundles", "/bundles", &e),
    };
    let done = s
        .call(move |d| {
            let r = d.import_bundle(&path);
            drop(path);
            r
        })
        .await;
    match done {
        Ok(r) => {
            let mut m = format!(
                "Imported: {} batches applied ({} changes), {} already present, {} waiting for earlier ones.",
                r.applied_batches, r.applied_changes, r.already_present, r.waiting
            );
            if !r.rejected.is_empty() {
                let _ = write!(m, " Rejected {}: {}", r.rejected.len(), r.rejected.join("; "));
            }
            if let Some(t) = &r.truncated {
                let _ = write!(m, " {t}.");
            }
            bundles_with(&s, Some(notice(r.ok, &m)), StatusCode::OK).await
        }
        Err(e) => {
            let m = format!("{e}. Nothing was changed.");
            bundles_with(&s, Some(notice(false, &m)), status_of(&e)).await
        }
    }
}
