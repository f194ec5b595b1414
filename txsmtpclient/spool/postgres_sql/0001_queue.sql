-- txsmtp queue schema, version 1: entries, message bodies in chunks, and the
-- finished occurrences of recurring entries.  Applied by
-- `python -m txsmtpclient migrate --queue URL` (or `twist txsmtp --migrate`)
-- in one transaction; README.rst documents every table and column.

-- One row per queued message: its state, when it is due, its envelope and
-- history (the spool's JSON entry format), and the lease of the worker
-- sending it.
CREATE TABLE txsmtp_entry (
    id              text PRIMARY KEY,
    state           text NOT NULL CHECK (
        state IN ('queue', 'sending', 'held', 'done', 'failed', 'cancelled', 'corrupt')
    ),
    due             double precision NOT NULL,
    created         double precision NOT NULL,
    envelope        json NOT NULL,
    size            bigint NOT NULL DEFAULT 0,
    idempotency_key text UNIQUE,
    lease_owner     text,
    lease_token     uuid,
    lease_until     timestamptz,
    reason          text,
    updated         timestamptz NOT NULL DEFAULT now()
);

-- Due queued entries, earliest first: the workers' hot query.
CREATE INDEX txsmtp_entry_due ON txsmtp_entry (due, id) WHERE state = 'queue';
-- Expired leases of dead workers.
CREATE INDEX txsmtp_entry_lease ON txsmtp_entry (lease_until) WHERE state = 'sending';
-- Operators' listings by state.
CREATE INDEX txsmtp_entry_state ON txsmtp_entry (state, created);

-- A message's bytes, in order, in chunks of at most 1 MiB, so that neither
-- writing nor reading a big message needs it whole in memory.
CREATE TABLE txsmtp_chunk (
    entry_id text NOT NULL REFERENCES txsmtp_entry (id) ON DELETE CASCADE,
    seq      integer NOT NULL CHECK (seq >= 0),
    data     bytea NOT NULL,
    PRIMARY KEY (entry_id, seq)
);

-- Each finished occurrence of a recurring entry, once: the primary key is the
-- occurrence key, so a second worker finishing the same occurrence (after a
-- lease expired under a slow one) does not advance the entry twice.
CREATE TABLE txsmtp_occurrence (
    entry_id       text NOT NULL REFERENCES txsmtp_entry (id) ON DELETE CASCADE,
    occurrence_due double precision NOT NULL,
    outcome        text NOT NULL,
    worker         text NOT NULL,
    finished       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (entry_id, occurrence_due)
);
