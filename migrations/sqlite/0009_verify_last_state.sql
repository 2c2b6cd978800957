-- A re-queued check keeps its last final state (passed, failed, error, incompatible) until
-- the new run's result arrives: the gate goes on honouring a pass while the check runs again.
ALTER TABLE verify_jobs ADD COLUMN last_state TEXT;
