-- meshcore_nodes.reputation_score becomes the relay ledger's reputation of the node (issue 7):
-- the fee multiplier its relaying record gives, 1.0 to 1.5, written with the ledger
-- (Store::save_ledger). Until now the peer manager wrote its own link-reliability score
-- there (0.0 to 2.0, never read back); that score now stays in memory. Every row restarts
-- at the neutral 1.0 and the ledger rewrites the rows of the neighbours it has rated.
UPDATE meshcore_nodes SET reputation_score = 1.0;
