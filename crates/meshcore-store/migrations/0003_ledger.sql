-- The relay ledger (issue 7): one row per neighbour in meshcore_bandwidth_tokens, the latest
-- signed IOU per neighbour and direction, and the node's own ledger state.
--
-- Amounts are integer milli-tokens (1 token = 1000) in the *_milli columns; the seed's
-- tokens_earned and tokens_spent columns hold the same amounts in whole tokens, rounded
-- down, for tools written against the seed. reputation_modifier is the fee multiplier the
-- neighbour's reputation gives (1.0 to 1.5). Times in *_ms columns are Unix milliseconds.
-- Charges accumulate exactly as bytes x price (milli-tokens.bytes/MB, up to 128 bits), kept
-- as decimal text in *_micro.
ALTER TABLE meshcore_bandwidth_tokens ADD COLUMN tokens_earned_milli INTEGER NOT NULL DEFAULT 0
    CHECK (tokens_earned_milli >= 0);
ALTER TABLE meshcore_bandwidth_tokens ADD COLUMN tokens_spent_milli INTEGER NOT NULL DEFAULT 0
    CHECK (tokens_spent_milli >= 0);
ALTER TABLE meshcore_bandwidth_tokens ADD COLUMN receivable_micro TEXT NOT NULL DEFAULT '0';
ALTER TABLE meshcore_bandwidth_tokens ADD COLUMN payable_micro TEXT NOT NULL DEFAULT '0';
ALTER TABLE meshcore_bandwidth_tokens ADD COLUMN allowance_milli INTEGER;
ALTER TABLE meshcore_bandwidth_tokens ADD COLUMN earned_before_epoch_milli INTEGER NOT NULL DEFAULT 0;
ALTER TABLE meshcore_bandwidth_tokens ADD COLUMN spent_before_epoch_milli INTEGER NOT NULL DEFAULT 0;
ALTER TABLE meshcore_bandwidth_tokens ADD COLUMN spent_before_epoch_bytes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE meshcore_bandwidth_tokens ADD COLUMN reputation_score INTEGER NOT NULL DEFAULT 0
    CHECK (reputation_score BETWEEN 0 AND 1000);
ALTER TABLE meshcore_bandwidth_tokens ADD COLUMN reputation_as_of_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE meshcore_bandwidth_tokens ADD COLUMN over_cutoff_since_ms INTEGER;
ALTER TABLE meshcore_bandwidth_tokens ADD COLUMN updated_at INTEGER NOT NULL DEFAULT 0;

-- The latest IOU accepted from ('received') or signed to ('sent') each neighbour.
CREATE TABLE meshcore_ledger_ious (
    neighbour_id            TEXT    NOT NULL,
    direction               TEXT    NOT NULL CHECK (direction IN ('received', 'sent')),
    epoch                   INTEGER NOT NULL,
    seq                     INTEGER NOT NULL,
    cumulative_bytes        INTEGER NOT NULL,
    cumulative_amount_milli INTEGER NOT NULL,
    iou                     BLOB    NOT NULL,                 -- the signed IOU, 160 bytes
    updated_at              INTEGER NOT NULL,
    PRIMARY KEY (neighbour_id, direction)
);

-- This node's side of the ledger: one row.
CREATE TABLE meshcore_ledger_state (
    id                      INTEGER PRIMARY KEY CHECK (id = 1),
    epoch                   INTEGER NOT NULL,                 -- the epoch it signs IOUs in
    allowance_pool_milli    INTEGER NOT NULL,
    allowance_pool_as_of_ms INTEGER NOT NULL,
    own_reputation_score    INTEGER NOT NULL,
    own_reputation_as_of_ms INTEGER NOT NULL,
    updated_at              INTEGER NOT NULL
);
