//! The conflict pages: the list, one conflict with its values side by side, and resolving it.

use super::*;

pub async fn conflicts(State(s): State<AppState>) -> Response {
    conflicts_with(&s, None).await
}

async fn conflicts_with(s: &AppState, note: Option<String>) -> Response {
    let list = match s.call(|d| d.conflicts()).await {
        Ok(l) => l,
        Err(e) => return error_page(s, "Conflicts", "/conflicts", &e),
    };
    let mut b = note.unwrap_or_default();
    if list.is_empty() {
        b.push_str("<p class=\"muted\" id=\"no-conflicts\">No open conflicts.</p>");
    } else {
        conflict_list(&mut b, &list, true);
    }
    page(s, "Conflicts", "/conflicts", &b).into_response()
}

pub async fn conflict(State(s): State<AppState>, Path(id): Path<String>) -> Response {
    conflict_with(&s, id, None, "", StatusCode::OK).await
}

async fn conflict_with(
    s: &AppState,
    id: String,
    note: Option<String>,
    typed: &str,
    status: StatusCode,
) -> Response {
    let c = match s.call(move |d| d.conflict(&id)).await {
        Ok(c) => c,
        Err(e) => return error_page(s, "Conflict", "/conflicts", &e),
    };
    let mut b = note.unwrap_or_default();
    let _ = write!(
        b,
        "<p>Field <code>{}</code> of <a href=\"/records/{}\">{}</a> holds {} concurrent values. \
         Reads show value {} now (the deterministic pick, the same on every node). Keeping one \
         writes it as a new local change, which closes the conflict on every node that receives it.</p>",
        esc(&c.path),
        record_href(&c.entity),
        esc(&c.entity),
        c.values.len(),
        c.winner
    );
    let _ = write!(
        b,
        "<form method=\"post\" action=\"/conflicts/{}/resolve\">{}<div class=\"sides\">",
        seg(&c.id),
        csrf_field(s)
    );
    for v in &c.values {
        let winner = v.index == c.winner;
        let _ = write!(
            b,
            "<section class=\"side{}\" data-value=\"{}\"><h2>Value {}{}</h2>{}\
             <p>by {}<br><span class=\"muted\">written {} UTC</span></p>\
             <button name=\"take\" value=\"{}\">Keep value {}</button></section>",
            if winner { " winner" } else { "" },
            v.index,
            v.index,
            if winner { " <span class=\"tag good\">shown now</span>" } else { "" },
            json_pre(&v.value),
            v.node
                .as_deref()
                .map_or("an unknown author".into(), |n| label(n, v.node_name.as_deref())),
            utc(v.time),
            v.index,
            v.index,
        );
    }
    let _ = write!(
        b,
        "</div><h2>Or write another value</h2><label>Value as JSON (e.g. <code>\"F\"</code>, \
         <code>42</code>, <code>true</code>)<textarea name=\"value\">{}</textarea></label>\
         <button name=\"custom\" value=\"1\">Write this value</button></form>",
        esc(typed)
    );
    (status, page(s, "Conflict", "/conflicts", &b)).into_response()
}

/// Reads a resolution from the conflict form.
pub fn resolution(form: &Params) -> Result<Resolution, String> {
    if let Some(t) = form.get("take").filter(|_| !form.contains_key("custom")) {
        return t
            .trim()
            .parse::<usize>()
            .map(Resolution::Take)
            .map_err(|_| format!("{t:?} is not a value number"));
    }
    let text = form.get("value").map(|v| v.trim()).unwrap_or_default();
    if text.is_empty() {
        return Err("Pick one of the values, or enter a value as JSON.".into());
    }
    serde_json::from_str(text)
        .map(Resolution::Value)
        .map_err(|e| format!("That is not valid JSON ({e}); a text value needs quotes, e.g. \"F\". Nothing was changed."))
}

pub async fn resolve(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Form(form): Form<Params>,
) -> Response {
    if let Some(r) = csrf_refusal(&s, &form) {
        return r;
    }
    let typed = form.get("value").cloned().unwrap_or_default();
    let how = match resolution(&form) {
        Ok(h) => h,
        Err(m) => {
            return conflict_with(
                &s,
                id,
                Some(notice(false, &m)),
                &typed,
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await;
        }
    };
    let key = id.clone();
    match s.call(move |d| d.resolve(&key, &how)).await {
        Ok(r) => conflicts_with(&s, Some(notice(r.ok, &r.message))).await,
        Err(e @ DataError::Input(_)) => {
            let m = format!("{e}. Nothing was changed.");
            conflict_with(&s, id, Some(notice(false, &m)), &typed, status_of(&e)).await
        }
        Err(e) => error_page(&s, "Conflict", "/conflicts", &e),
    }
}
