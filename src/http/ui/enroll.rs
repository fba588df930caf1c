//! Nodes → "Add a Proxmox VE node in one command": a one-time enrollment token and the
//! command to paste into the Proxmox host's root shell (see `zlh node enroll`).

use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

use super::{Page, Sess, UiError, UiForm, correctable, render, render_status};
use crate::domain::enrollments;
use crate::http::AppState;

#[derive(Debug, Deserialize)]
pub struct EnrollForm {
    #[serde(default)]
    name: String,
}

#[derive(Template)]
#[template(path = "node_enroll.html")]
struct EnrollPage {
    page: Page,
    name: String,
    command: String,
    expires: String,
    error: String,
    loopback: bool,
}

pub async fn enroll(
    State(st): State<AppState>,
    sess: Sess,
    UiForm(f): UiForm<EnrollForm>,
) -> Result<Response, UiError> {
    sess.require_admin()?;
    let page = sess.page(&st, "nodes", "Add a Proxmox VE node").await?;
    let name = f.name.trim().to_string();
    let issued = {
        let name = name.clone();
        st.db
            .write(move |tx| enrollments::issue(tx, &name, enrollments::DEFAULT_TTL_MS))
            .await
    };
    let url = st.config.advertised();
    let loopback = url.contains("://127.") || url.contains("://[::1]");
    match issued {
        Ok(i) => {
            tracing::info!(node = %i.name, user = %sess.user().username, "enrollment token made in the UI");
            render(&EnrollPage {
                page,
                name: i.name,
                command: crate::shipping::enroll::command_line(&url, &i.token),
                expires: crate::util::format_ts(i.expires_at),
                error: String::new(),
                loopback,
            })
        }
        Err(e) => render_status(
            StatusCode::BAD_REQUEST,
            &EnrollPage {
                page,
                name,
                command: String::new(),
                expires: String::new(),
                error: correctable(e)?.text(),
                loopback,
            },
        ),
    }
}
