//! `meshcore tokens`: a running node's relay ledger — balance, earned, spent, and per
//! neighbour the credit, the debt and the latest IOUs.

use reqwest::Method;
use serde_json::Value;

use super::ApiArg;
use crate::client::ApiClient;

/// Arguments of `meshcore tokens`.
#[derive(Debug, clap::Args)]
pub struct TokensArgs {
    #[command(flatten)]
    api: ApiArg,
    /// Print the node's whole answer as JSON (amounts in milli-tokens).
    #[arg(long)]
    json: bool,
}

/// Milli-tokens as tokens with three decimals.
fn tokens(value: &Value) -> String {
    match (value.as_i64(), value.as_u64()) {
        (Some(milli), _) => {
            let sign = if milli < 0 { "-" } else { "" };
            let milli = milli.unsigned_abs();
            format!("{sign}{}.{:03}", milli / 1000, milli % 1000)
        }
        (None, Some(milli)) => format!("{}.{:03}", milli / 1000, milli % 1000),
        _ => "—".to_owned(),
    }
}

fn iou_summary(iou: &Value) -> String {
    if iou.is_null() {
        return "—".to_owned();
    }
    format!(
        "#{} {} for {} B",
        iou["seq"],
        tokens(&iou["cumulative_amount"]),
        iou["cumulative_bytes"]
    )
}

pub(super) fn run(args: TokensArgs) -> anyhow::Result<()> {
    let client = ApiClient::new(&args.api.api)?;
    let answer = super::peers::block_on(client.request(Method::GET, "/tokens", None))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    println!(
        "balance {} tokens = {:.4} at token_rate {} (earned {}, spent {}, free allowance used {}, left {})",
        tokens(&answer["balance"]),
        answer["balance_value"].as_f64().unwrap_or(0.0),
        answer["token_rate"],
        tokens(&answer["earned"]),
        tokens(&answer["spent"]),
        tokens(&answer["allowance_used"]),
        tokens(&answer["allowance_pool"]),
    );
    println!(
        "fee {} tokens/MB (tokens_per_mb {} × reputation {:.3}); pays a neighbour at {} tokens owed ({} for a new one)",
        tokens(&answer["fee_per_mb"]),
        answer["tokens_per_mb"],
        answer["multiplier"].as_f64().unwrap_or(1.0),
        tokens(&answer["payment_threshold"]),
        tokens(&answer["new_neighbour_threshold"]),
    );
    let neighbours = answer["neighbours"].as_array().cloned().unwrap_or_default();
    if neighbours.is_empty() {
        println!("no accounts with neighbours yet");
        return Ok(());
    }
    println!(
        "{:<16} {:>12} {:>12} {:>10} {:>10} {:>12} {:>12} {:<9} {:<26} {:<26}",
        "neighbour",
        "earned",
        "spent",
        "credit",
        "debt",
        "relayed B",
        "consumed B",
        "standing",
        "latest IOU received",
        "latest IOU sent"
    );
    for n in &neighbours {
        let id = n["node_id"].as_str().unwrap_or("?");
        println!(
            "{:<16} {:>12} {:>12} {:>10} {:>10} {:>12} {:>12} {:<9} {:<26} {:<26}",
            id.get(..16).unwrap_or(id),
            tokens(&n["tokens_earned"]),
            tokens(&n["tokens_spent"]),
            tokens(&n["credit"]),
            tokens(&n["debt"]),
            n["bytes_relayed"],
            n["bytes_consumed"],
            n["standing"].as_str().unwrap_or("?"),
            iou_summary(&n["latest_iou_received"]),
            iou_summary(&n["latest_iou_sent"]),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn milli_tokens_print_as_tokens() {
        assert_eq!(tokens(&json!(100_000)), "100.000");
        assert_eq!(tokens(&json!(1_234)), "1.234");
        assert_eq!(tokens(&json!(-5)), "-0.005");
        assert_eq!(tokens(&json!(u64::MAX)), "18446744073709551.615");
        assert_eq!(tokens(&json!(null)), "—");
        assert_eq!(iou_summary(&json!(null)), "—");
    }
}
