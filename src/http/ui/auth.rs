//! Login, logout and the first-run setup. The setup token is printed to the log once
//! per start while no account has a password; only its SHA-256 is stored.

use std::net::SocketAddr;
use std::sync::OnceLock;

use askama::Template;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use serde::Deserialize;

use super::{
    LOGIN_CSRF_COOKIE, Page, SESSION_COOKIE, Sess, UiError, UiForm, cookie, render_status,
    see_other, set_cookie,
};
use crate::agent::constant_time_eq;
use crate::db::{Db, DbError};
use crate::domain::sessions::{self, SESSION_TTL_MS};
use crate::domain::{DomainError, random_secret, sha256_hex, users};
use crate::http::AppState;
use crate::util::untrusted;

/// Meta key holding the SHA-256 of the current setup token.
const SETUP_TOKEN_KEY: &str = "setup_token_hash";

/// At start: while no account can log in, makes a new one-time setup token, stores its
/// hash and returns it (to be printed to the log). None once an account exists.
pub async fn prepare_setup(db: &Db) -> Result<Option<String>, DomainError> {
    db.write(|tx| {
        if !users::setup_needed(tx)? {
            crate::db::meta_delete(tx, SETUP_TOKEN_KEY).map_err(DbError::from)?;
            return Ok(None);
        }
        let token = random_secret()?[..32].to_string();
        crate::db::meta_set(tx, SETUP_TOKEN_KEY, &sha256_hex(&token)).map_err(DbError::from)?;
        Ok(Some(token))
    })
    .await
}

/// Where to go after logging in: a local path only (never another site). Browsers
/// drop tabs and newlines and read `\` as `/`, so `/\t/evil.com` would be `//evil.com`:
/// one leading `/`, then neither `/` nor `\`, no whitespace or control character
/// anywhere (they also break the `Location` header), and the path must resolve
/// against this origin to this origin. Anything else goes to `/`.
fn safe_next(next: Option<&str>) -> String {
    next.filter(|n| is_local_path(n))
        .map_or_else(|| "/".into(), str::to_string)
}

fn is_local_path(n: &str) -> bool {
    let mut chars = n.chars();
    if chars.next() != Some('/') || matches!(chars.next(), Some('/' | '\\')) {
        return false;
    }
    if n.chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == '\\')
    {
        return false;
    }
    // The last word: resolved against an origin, it stays on that origin.
    let Ok(base) = reqwest::Url::parse("http://zlh.invalid/") else {
        return false;
    };
    base.join(n)
        .is_ok_and(|u| u.origin() == base.origin() && u.username().is_empty())
}

/// A page with a form shown before there is a session (login, setup): a fresh CSRF
/// token in the form and in a cookie bound to it.
fn public_form<T: Template>(
    headers: &HeaderMap,
    status: StatusCode,
    title: &str,
    build: impl FnOnce(Page) -> T,
) -> Result<Response, UiError> {
    let token = random_secret()?;
    let mut page = Page::bare(title);
    page.csrf = token.clone();
    let mut resp = render_status(status, &build(page))?;
    resp.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(headers, LOGIN_CSRF_COOKIE, &token, 3600),
    );
    Ok(resp)
}

fn check_login_csrf(headers: &HeaderMap, sent: &str) -> Result<(), UiError> {
    match cookie(headers, LOGIN_CSRF_COOKIE) {
        Some(c) if !sent.is_empty() && constant_time_eq(c.as_bytes(), sent.as_bytes()) => Ok(()),
        _ => Err(UiError::Forbidden(
            "missing or wrong CSRF token: reload the page and try again".into(),
        )),
    }
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    page: Page,
    next: String,
    username: String,
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct NextQuery {
    #[serde(default)]
    next: Option<String>,
}

pub async fn login_form(
    State(st): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<NextQuery>,
) -> Result<Response, UiError> {
    if st.db.call(|c| users::setup_needed(c)).await? {
        return Ok(see_other("/setup"));
    }
    if super::session_of(&st, &headers).await?.is_some() {
        return Ok(see_other(&safe_next(q.next.as_deref())));
    }
    login_page(
        &headers,
        StatusCode::OK,
        safe_next(q.next.as_deref()),
        String::new(),
        None,
    )
}

fn login_page(
    headers: &HeaderMap,
    status: StatusCode,
    next: String,
    username: String,
    error: Option<String>,
) -> Result<Response, UiError> {
    public_form(headers, status, "Sign in", |page| LoginPage {
        page,
        next,
        username,
        error,
    })
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    next: Option<String>,
}

/// Verifying against this when the user does not exist keeps the answer's timing the
/// same as for a wrong password.
fn dummy_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| users::hash_password("not-a-real-password-at-all").unwrap_or_default())
}

pub async fn login(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    UiForm(f): UiForm<LoginForm>,
) -> Result<Response, UiError> {
    check_login_csrf(&headers, &f.csrf)?;
    let next = safe_next(f.next.as_deref());
    let username = f.username.trim().to_string();
    // A name longer than any account's is keyed by its hash: the counters stay small.
    let name_key = if username.len() > 64 {
        sha256_hex(&username)
    } else {
        username.clone()
    };
    let keys = vec![format!("ip:{}", peer.ip()), format!("user:{name_key}")];
    if let Err(wait) = st.ui.begin_attempt(&keys) {
        tracing::warn!(user = ?untrusted(&username), peer = %peer.ip(), "login refused: too many failed attempts");
        return login_page(
            &headers,
            StatusCode::TOO_MANY_REQUESTS,
            next,
            username,
            Some(format!("Too many failed sign-ins. Try again in {wait} s.")),
        );
    }
    let checked = check_password(&st, username.clone(), f.password).await;
    let user = match checked {
        Ok(user) => user,
        Err(e) => {
            // Not a guess that was judged (busy, or a failure of ours): not counted.
            st.ui.refund(&keys);
            return Err(e);
        }
    };
    let Some(user) = user else {
        tracing::info!(user = ?untrusted(&username), peer = %peer.ip(), "failed sign-in");
        return login_page(
            &headers,
            StatusCode::UNAUTHORIZED,
            next,
            username,
            Some("Wrong user name or password.".into()),
        );
    };
    st.ui.clear(&keys);
    let uid = user.id;
    let secret = st.db.write(move |tx| sessions::create(tx, uid)).await?;
    tracing::info!(user = ?untrusted(&user.username), "signed in");
    Ok(session_redirect(&headers, &next, &secret))
}

/// The account `name` when `password` is its password. The pooled connection is held
/// only for the look-up; argon2 runs after it, behind the UI's hashing gate.
async fn check_password(
    st: &AppState,
    name: String,
    password: String,
) -> Result<Option<users::User>, UiError> {
    let found = st
        .db
        .call(move |c| users::password_hash_of(c, &name))
        .await?;
    st.ui
        .hash(move || match found {
            Some((user, phc)) => users::password_matches(&phc, &password).then_some(user),
            None => {
                // The same work as for a wrong password: the timing says nothing.
                let _same_timing = users::password_matches(dummy_hash(), &password);
                None
            }
        })
        .await
}

/// The redirect that starts a session: sets its cookie, drops the login CSRF cookie.
fn session_redirect(headers: &HeaderMap, to: &str, secret: &str) -> Response {
    let mut resp = see_other(to);
    let h = resp.headers_mut();
    h.append(
        header::SET_COOKIE,
        set_cookie(headers, SESSION_COOKIE, secret, SESSION_TTL_MS / 1000),
    );
    h.append(
        header::SET_COOKIE,
        set_cookie(headers, LOGIN_CSRF_COOKIE, "", 0),
    );
    resp
}

pub async fn logout(
    State(st): State<AppState>,
    sess: Sess,
    headers: HeaderMap,
) -> Result<Response, UiError> {
    let id = sess.0.id;
    st.db.write(move |tx| sessions::delete(tx, id)).await?;
    let mut resp = see_other("/login");
    resp.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(&headers, SESSION_COOKIE, "", 0),
    );
    Ok(resp)
}

#[derive(Template)]
#[template(path = "setup.html")]
struct SetupPage {
    page: Page,
    username: String,
    error: Option<(String, String)>,
}

pub async fn setup_form(
    State(st): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, UiError> {
    if !st.db.call(|c| users::setup_needed(c)).await? {
        return Ok(see_other("/login"));
    }
    setup_page(&headers, StatusCode::OK, "admin".into(), None)
}

fn setup_page(
    headers: &HeaderMap,
    status: StatusCode,
    username: String,
    error: Option<(String, String)>,
) -> Result<Response, UiError> {
    public_form(headers, status, "First-run setup", |page| SetupPage {
        page,
        username,
        error,
    })
}

#[derive(Debug, Deserialize)]
pub struct SetupForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    token: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    password2: String,
}

pub async fn setup(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    UiForm(f): UiForm<SetupForm>,
) -> Result<Response, UiError> {
    check_login_csrf(&headers, &f.csrf)?;
    // Keyed by address only: wrong tokens from one place must not lock the right
    // token out from every other.
    let keys = vec![format!("setup-ip:{}", peer.ip())];
    let username = f.username.trim().to_string();
    if let Err(wait) = st.ui.begin_attempt(&keys) {
        tracing::warn!(peer = %peer.ip(), "setup refused: too many wrong tokens");
        return setup_page(
            &headers,
            StatusCode::TOO_MANY_REQUESTS,
            username,
            Some((
                "token".into(),
                format!("Too many wrong tokens. Try again in {wait} s."),
            )),
        );
    }
    let outcome = setup_attempt(&st, &f, &username).await;
    match outcome {
        Ok(Ok((user, secret))) => {
            st.ui.clear(&keys);
            tracing::info!(user = ?untrusted(&user.username), "first-run setup done: admin account created");
            Ok(session_redirect(&headers, "/", &secret))
        }
        Ok(Err((field, message))) => {
            // Only a wrong token is a guess; the attempt is taken back for the rest.
            if field != "token" {
                st.ui.refund(&keys);
            } else {
                tracing::info!(peer = %peer.ip(), "wrong setup token");
            }
            setup_page(
                &headers,
                StatusCode::BAD_REQUEST,
                username,
                Some((field, message)),
            )
        }
        Err(e) => {
            st.ui.refund(&keys);
            Err(e)
        }
    }
}

/// A (field, message) the setup form shows again.
type SetupRefusal = (String, String);

/// Why a setup with the token of SHA-256 `token_hash` is refused now, if it is.
fn setup_refusal(
    c: &rusqlite::Connection,
    token_hash: &str,
) -> Result<Option<SetupRefusal>, DomainError> {
    if !users::setup_needed(c)? {
        return Ok(Some((
            "token".into(),
            "Setup is already done: sign in.".into(),
        )));
    }
    let stored = crate::db::meta_get(c, SETUP_TOKEN_KEY).map_err(DbError::from)?;
    if !stored.is_some_and(|h| constant_time_eq(h.as_bytes(), token_hash.as_bytes())) {
        return Ok(Some((
            "token".into(),
            "Wrong setup token: copy it from the log of `zlh serve`.".into(),
        )));
    }
    Ok(None)
}

/// Checks the token, hashes the password (outside the database pool) and creates the
/// admin with a session, or says which field is wrong.
async fn setup_attempt(
    st: &AppState,
    f: &SetupForm,
    username: &str,
) -> Result<Result<(users::User, String), SetupRefusal>, UiError> {
    if f.password != f.password2 {
        return Ok(Err((
            "password2".into(),
            "The two passwords differ.".into(),
        )));
    }
    let token_hash = sha256_hex(f.token.trim());
    let hash = token_hash.clone();
    if let Some(refusal) = st.db.call(move |c| setup_refusal(c, &hash)).await? {
        return Ok(Err(refusal));
    }
    // The password is checked before the account exists: nothing half-made.
    let password = f.password.clone();
    let phc = match st.ui.hash(move || users::hash_password(&password)).await? {
        Ok(p) => p,
        Err(DomainError::Invalid { field, message }) => return Ok(Err((field, message))),
        Err(e) => return Err(e.into()),
    };
    let name = username.to_string();
    let outcome = st
        .db
        .write(move |tx| {
            // Again inside the transaction: another setup may have won meanwhile.
            if let Some(refusal) = setup_refusal(tx, &token_hash)? {
                return Ok(Err(refusal));
            }
            let user = match users::create_user(tx, &name, true, Some(&phc)) {
                Ok(u) => u,
                Err(DomainError::Invalid { field, message }) => return Ok(Err((field, message))),
                Err(DomainError::Conflict(m)) => return Ok(Err(("username".into(), m))),
                Err(e) => return Err(e),
            };
            crate::db::meta_delete(tx, SETUP_TOKEN_KEY).map_err(DbError::from)?;
            let secret = sessions::create(tx, user.id)?;
            Ok::<_, DomainError>(Ok((user, secret)))
        })
        .await?;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::safe_next;

    #[test]
    fn next_is_a_local_path_or_home() {
        for ok in ["/", "/servers/3", "/servers?x=1#a", "/a/b//c"] {
            assert_eq!(safe_next(Some(ok)), ok, "{ok:?}");
        }
        for bad in [
            "",
            "//evil.com",
            "/\\evil.com",
            "\\/evil.com",
            "/\t/evil.com",
            "/\0",
            "/\r\nX: y",
            "/ /evil.com",
            "http://evil.com/",
            "evil.com",
            "/a\\b",
            "/\u{a0}/evil.com",
        ] {
            assert_eq!(safe_next(Some(bad)), "/", "{bad:?}");
        }
        assert_eq!(safe_next(None), "/");
    }
}
