//! Mail folders besides the one read, as far as moving a message needs them: a folder is
//! looked up by well-known name (`archive`, `junkemail`, …) or by id
//! (`GET /users/{u}/mailFolders/{folder}`, 404 `ErrorItemNotFound` when there is none), a test
//! makes folders of its own (`POST /_sim/folders`), and `POST /users/{u}/messages/{id}/move`
//! `{"destinationId"}` takes a message out of the inbox (delta then reports it `@removed`) into
//! the folder under a new id, answering 201 with the moved message, as Graph does.

use super::answers::{sim_refusal, GraphError, Reply};
use super::codecs::push_json_str;
use super::mailboxes::Mailbox;
use super::odata::Selection;
use super::routes::Call;
use super::state::{lock, Shared, State};
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::Value;

/// Well-known folder names Graph takes in place of a folder id.
const WELL_KNOWN: &[&str] = &[
    "archive",
    "deleteditems",
    "drafts",
    "inbox",
    "junkemail",
    "outbox",
    "sentitems",
];

/// A folder a test made.
pub(super) struct Folder {
    pub(super) id: String,
    pub(super) display_name: String,
}

/// A message moved out of the inbox: its folder's id, and the message as it reads there.
pub(super) struct Moved {
    pub(super) folder_id: String,
    pub(super) message: Value,
}

impl Mailbox {
    /// A folder by well-known name (any case) or id: (id, display name).
    fn folder(&self, key: &str) -> Option<(String, String)> {
        let well_known = |w: &str| format!("AAMkF-{}-{w}", self.index);
        if let Some(name) = WELL_KNOWN
            .iter()
            .find(|w| w.eq_ignore_ascii_case(key) || well_known(w) == key)
        {
            return Some((well_known(name), name.to_string()));
        }
        self.folders
            .iter()
            .find(|f| f.id == key)
            .map(|f| (f.id.clone(), f.display_name.clone()))
    }
}

impl State {
    /// `GET /users/{u}/mailFolders/{folder}`.
    pub(super) fn get_folder(
        &mut self,
        mbx: usize,
        key: &str,
        call: &Call<'_>,
    ) -> Result<Reply, GraphError> {
        let mb = &self.mailboxes[mbx];
        let (id, name) = mb.folder(key).ok_or_else(GraphError::item_not_found)?;
        let mut out = String::from("{\"@odata.context\":");
        push_json_str(
            &mut out,
            &format!(
                "{}/$metadata#users('{}')/mailFolders/$entity",
                call.base, mb.upn
            ),
        );
        out.push_str(",\"id\":");
        push_json_str(&mut out, &id);
        out.push_str(",\"displayName\":");
        push_json_str(&mut out, &name);
        out.push('}');
        Ok(Reply::json(200, out))
    }

    /// `POST /users/{u}/messages/{id}/move` with `{"destinationId": folder}`.
    pub(super) fn move_message(
        &mut self,
        mbx: usize,
        id: &str,
        call: &Call<'_>,
    ) -> Result<Reply, GraphError> {
        let body = call.json()?;
        let destination = body
            .get("destinationId")
            .and_then(Value::as_str)
            .ok_or_else(|| GraphError::bad_request("destinationId is required."))?;
        let mb = &mut self.mailboxes[mbx];
        let (folder_id, _) = mb.folder(destination).ok_or_else(|| {
            GraphError::new(
                400,
                "ErrorInvalidIdMalformed",
                "Id is malformed or names no folder.",
            )
        })?;
        let idx = mb.find(id).ok_or_else(GraphError::item_not_found)?;
        if folder_id.ends_with("-inbox") {
            return Err(GraphError::bad_request(
                "The message is in that folder already.",
            ));
        }
        let mut json = String::new();
        mb.messages[idx].write_json(&Selection::All, None, &mut json);
        let mut message: Value = serde_json::from_str(&json).expect("the simulator writes JSON");
        message["id"] = Value::String(format!("{id}-moved"));
        message["parentFolderId"] = Value::String(folder_id.clone());
        mb.remove(idx);
        mb.advance_hints();
        mb.moved.push(Moved {
            folder_id,
            message: message.clone(),
        });
        Ok(Reply::json(201, message.to_string()))
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct FolderRequest {
    mailbox: String,
    #[serde(rename = "displayName")]
    display_name: String,
}

/// `POST /_sim/folders` `{"mailbox", "displayName"}`: a new folder; answers its `id`.
pub(super) async fn sim_folders(state: web::Data<Shared>, body: web::Bytes) -> HttpResponse {
    let req: FolderRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return sim_refusal(400, format!("invalid body: {e}")).into_http(),
    };
    let mut s = lock(&state);
    let Some(mbx) = s.resolve(&req.mailbox) else {
        return sim_refusal(404, format!("no mailbox '{}'", req.mailbox)).into_http();
    };
    let mb = &mut s.mailboxes[mbx];
    let id = format!("AAMkF-{}-{}", mb.index, mb.folders.len());
    mb.folders.push(Folder {
        id: id.clone(),
        display_name: req.display_name,
    });
    HttpResponse::Ok().json(serde_json::json!({ "id": id }))
}

/// The messages moved into folder `key` (well-known name, id or display name) of `mbx`, for
/// `GET /_sim/messages?mailbox=…&folder=…`.
pub(super) fn moved_into(s: &State, mbx: usize, key: &str) -> Vec<Value> {
    let mb = &s.mailboxes[mbx];
    let id = mb.folder(key).map(|(id, _)| id).or_else(|| {
        mb.folders
            .iter()
            .find(|f| f.display_name == key)
            .map(|f| f.id.clone())
    });
    mb.moved
        .iter()
        .filter(|m| Some(&m.folder_id) == id.as_ref())
        .map(|m| m.message.clone())
        .collect()
}
