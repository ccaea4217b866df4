"""Gates: lanes, drafts and the approval ladder, the outbox, effects, packets."""
