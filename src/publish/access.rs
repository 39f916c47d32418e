//! Who may connect: `publish.allow_uids` / `publish.allow_gids` checked
//! against the peer's credentials (SO_PEERCRED) when a connection is accepted.
//!
//! The gid is the primary group the client process had when it connected
//! (SO_PEERCRED carries no supplementary groups), so membership of a group by
//! `usermod -aG` alone does not pass `allow_gids`: that is what the socket
//! file's group and mode are for. Both lists unset: everyone who can open the
//! socket file passes. Leaves out the socket file's own permissions
//! (`listener.rs`).

use crate::config::PublishConfig;

/// The configured rule.
pub(crate) struct Access {
    uids: Option<Vec<u32>>,
    gids: Option<Vec<u32>>,
}

/// What SO_PEERCRED said about a client, if anything.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

impl Access {
    pub(crate) fn new(cfg: &PublishConfig) -> Access {
        Access {
            uids: cfg.allow_uids.clone(),
            gids: cfg.allow_gids.clone(),
        }
    }

    /// `Ok` if the peer may connect, else the reason for its ERROR text.
    /// Unknown credentials pass only when nothing is restricted.
    pub(crate) fn check(&self, peer: Option<Peer>) -> Result<(), String> {
        if self.uids.is_none() && self.gids.is_none() {
            return Ok(());
        }
        let Some(peer) = peer else {
            return Err(
                "peer credentials unavailable; publish.allow_uids/allow_gids cannot be checked"
                    .into(),
            );
        };
        let listed =
            |list: &Option<Vec<u32>>, id: u32| list.as_ref().is_some_and(|l| l.contains(&id));
        if listed(&self.uids, peer.uid) || listed(&self.gids, peer.gid) {
            return Ok(());
        }
        Err(format!(
            "uid {} (gid {}) may not connect: not in publish.allow_uids or publish.allow_gids",
            peer.uid, peer.gid
        ))
    }
}
