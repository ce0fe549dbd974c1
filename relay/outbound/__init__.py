"""Calls relay places itself (BACKENDS §6).

* ``jobs``: what a queued call is, its states, retries and quiet hours (sans-I/O).
* ``queue``: where jobs live — the store's table, shared by every relay on it (``JobQueue``;
  SQLite here, Postgres in ``relay.pg.jobs``), claimed under a per-account lock so the
  account's live-call cap and calls-per-second hold across relays.
* ``rest``: Twilio's REST API through the ``twilio`` library (``RELAY_TWILIO_API_URL``
  points it at a simulator or any compatible endpoint).
* ``pool``: the asyncio shell that claims jobs, places their calls, and retries.
* ``callbacks``: what Twilio reports about a placed call (status, answering machine) and
  what relay does about it.
"""
