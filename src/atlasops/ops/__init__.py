"""Operations: jobs with capabilities, route checks, runbooks and verified repair,
snapshots, content and deploy records."""
