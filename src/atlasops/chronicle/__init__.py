"""The chronicle: a daily log built only from what Atlas can read."""
