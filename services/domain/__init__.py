"""Rules several services share: one home for each, imported by any service, importing none of them."""
