//! `meshcore dht put` and `meshcore dht get`: a running node's DHT.

use reqwest::Method;
use serde_json::{json, Value};

use super::ApiArg;
use crate::client::ApiClient;

/// Arguments of `meshcore dht`.
#[derive(Debug, clap::Args)]
pub struct DhtArgs {
    #[command(subcommand)]
    what: DhtCommand,
}

#[derive(Debug, clap::Subcommand)]
enum DhtCommand {
    /// Store VALUE under NAME, signed by the node (others read it as NODE_ID/NAME and only
    /// this node can replace it). Prints the key to share.
    Put {
        #[command(flatten)]
        api: ApiArg,
        /// The record's name (1 to 60 bytes).
        name: String,
        /// The value: JSON if it parses as JSON, otherwise stored as a JSON string.
        value: String,
        /// Lifetime in seconds, 1 to 172800.
        #[arg(long, default_value_t = 3600)]
        ttl: i64,
        /// Print the node's whole answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Find the record at KEY (NODE_ID/NAME, or a 64-hex content key) and print its value.
    Get {
        #[command(flatten)]
        api: ApiArg,
        /// NODE_ID/NAME or a 64-hex content key.
        key: String,
        /// Print the node's whole answer as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Percent-encodes a query value.
fn encode_query(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub(super) fn run(args: DhtArgs) -> anyhow::Result<()> {
    match args.what {
        DhtCommand::Put {
            api,
            name,
            value,
            ttl,
            json,
        } => {
            let value: Value = serde_json::from_str(&value).unwrap_or(Value::String(value));
            let body = json!({"key": name, "value": value, "ttl": ttl});
            let client = ApiClient::new(&api.api)?;
            let answer =
                super::peers::block_on(client.request(Method::POST, "/dht/put", Some(&body)))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&answer)?);
            } else {
                println!(
                    "{} (stored on {} other nodes)",
                    answer["key"].as_str().unwrap_or("?"),
                    answer["stored_on"]
                );
            }
        }
        DhtCommand::Get { api, key, json } => {
            let client = ApiClient::new(&api.api)?;
            let path = format!("/dht/get?key={}", encode_query(&key));
            let answer = super::peers::block_on(client.request(Method::GET, &path, None))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&answer)?);
            } else {
                match &answer["value"] {
                    Value::String(text) => println!("{text}"),
                    other => println!("{other}"),
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::encode_query;

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(encode_query("ab/c d&e"), "ab%2Fc%20d%26e");
    }
}
