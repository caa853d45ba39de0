"""``securechat-admin``: the operator's tool (docs/operations.rst, "Backups and migration")."""
