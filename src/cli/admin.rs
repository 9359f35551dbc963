//! `sitesync admin`: the admin web view's token and its `[admin]` settings.

use clap::Subcommand;

use super::{Cli, CliError, input, node_dir, open_stopped};
use crate::say;

#[derive(Subcommand, Debug)]
pub enum AdminAction {
    /// Print the admin token (created, mode 0600, if the node has none yet). Paste it on the
    /// web view's login page, or send it as `Authorization: Bearer TOKEN` to the JSON API.
    Token,
    /// Set where `serve` runs the admin web view (the [admin] section of sitesync.toml).
    Set {
        /// Address to serve it on (IP:PORT; default 127.0.0.1:7780).
        #[arg(long, value_name = "IP:PORT")]
        listen: Option<String>,
        /// Allow an address other machines reach (the view is plain HTTP).
        #[arg(long, value_name = "true|false")]
        allow_remote: Option<bool>,
        /// Serve the admin view at all.
        #[arg(long, value_name = "true|false")]
        enabled: Option<bool>,
    },
}

pub(super) fn run(cli: &Cli, action: &AdminAction) -> Result<(), CliError> {
    let dir = node_dir(cli)?;
    match action {
        AdminAction::Token => {
            // The token is a file of its own: this works while the node runs.
            if !dir.join(crate::node::CONFIG_FILE).exists() {
                return Err(input(format!(
                    "{} is not a sitesync node directory; create one with `sitesync init`",
                    dir.display()
                )));
            }
            say!("{}", crate::node::admin_token(dir, random_token)?);
        }
        AdminAction::Set { listen, allow_remote, enabled } => {
            let mut node = open_stopped(cli)?;
            let mut admin = node.config.admin.clone();
            if let Some(l) = listen {
                admin.listen =
                    crate::config::parse_addr(l).map_err(|m| input(format!("--listen: {m}")))?;
            }
            if let Some(a) = allow_remote {
                admin.allow_remote = *a;
            }
            if let Some(e) = enabled {
                admin.enabled = *e;
            }
            admin.check().map_err(|m| input(format!("--listen: {m}")))?;
            node.config.admin = admin;
            node.save_config()?;
            let a = &node.config.admin;
            say!(
                "admin view {} on http://{}/{}",
                if a.enabled { "served" } else { "off; would be served" },
                a.listen,
                if a.allow_remote { " (remote access allowed)" } else { "" }
            );
        }
    }
    Ok(())
}

/// 32 random bytes for a new admin token, from the operating system.
fn random_token() -> Result<[u8; 32], crate::node::NodeError> {
    let mut out = [0u8; 32];
    crate::node::Env::fill_random(&crate::node::OsEnv, &mut out)?;
    Ok(out)
}
