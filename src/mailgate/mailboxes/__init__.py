"""Connected mailboxes: grants, IMAP sync, threads (docs/mailboxes.md)."""
