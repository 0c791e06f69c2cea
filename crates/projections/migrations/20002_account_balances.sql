-- Wallet balances, per account and currency, in minor units.
--
-- Folded from the account events as deltas (deposit +, hold −, refund +,
-- sale credit +); the fee account has a balance here but no rm_accounts row.
CREATE TABLE rm_account_balances (
    account_id  UUID    NOT NULL,
    currency    TEXT    NOT NULL,
    minor       BIGINT  NOT NULL,
    PRIMARY KEY (account_id, currency)
);
