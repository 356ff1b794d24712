"""Hospital commands: node check, approve, sent log, data check."""
