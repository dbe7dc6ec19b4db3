"""The wire contract of certcheck: message structs, subjects and stream definitions."""
