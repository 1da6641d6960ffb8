//! `meshcore config`: read or change the settings of a running node through its API.
//! Changes are stored by the node and outlive its restart.

use anyhow::anyhow;
use meshcore_node::SettingKey;
use reqwest::Method;
use serde_json::{Map, Value};

use super::ApiArg;
use crate::client::ApiClient;

/// Arguments of `meshcore config`.
#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    #[command(flatten)]
    api: ApiArg,
    #[command(subcommand)]
    action: ConfigAction,
}

#[derive(Debug, clap::Subcommand)]
enum ConfigAction {
    /// Print one setting's value, or all settings as JSON.
    Get {
        /// A setting name (see `meshcore run --help`); omit it for all.
        key: Option<String>,
    },
    /// Change a setting. The node checks it, stores it and applies it at once.
    Set {
        /// A setting name (see `meshcore run --help`).
        key: String,
        /// The new value: a number, text, or for lists comma-separated text or JSON.
        #[arg(allow_hyphen_values = true)]
        value: String,
    },
    /// Drop a runtime change, so the config file, environment, flags or default apply again.
    Reset {
        /// A setting name.
        key: String,
    },
}

fn setting_key(name: &str) -> anyhow::Result<SettingKey> {
    SettingKey::from_name(name).ok_or_else(|| {
        let known: Vec<_> = SettingKey::ALL.iter().map(|key| key.name()).collect();
        anyhow!(
            "unknown setting {name:?}; known settings are {}",
            known.join(", ")
        )
    })
}

fn print(value: &Value) -> anyhow::Result<()> {
    match value {
        Value::String(text) => println!("{text}"),
        Value::Number(number) => println!("{number}"),
        other => println!("{}", serde_json::to_string_pretty(other)?),
    }
    Ok(())
}

pub(super) fn run(args: ConfigArgs) -> anyhow::Result<()> {
    let client = ApiClient::new(&args.api.api)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match args.action {
            ConfigAction::Get { key } => {
                let settings = client.request(Method::GET, "/settings", None).await?;
                match key {
                    Some(name) => print(&settings[setting_key(&name)?.name()]),
                    None => print(&settings),
                }
            }
            ConfigAction::Set { key, value } => {
                let key = setting_key(&key)?;
                let patch = Value::Object(Map::from_iter([(
                    key.name().to_owned(),
                    key.value_from_text(&value),
                )]));
                let settings = client
                    .request(Method::PUT, "/settings", Some(&patch))
                    .await?;
                print(&settings[key.name()])
            }
            ConfigAction::Reset { key } => {
                let key = setting_key(&key)?;
                let settings = client
                    .request(Method::DELETE, &format!("/settings/{}", key.name()), None)
                    .await?;
                print(&settings[key.name()])
            }
        }
    })
}
