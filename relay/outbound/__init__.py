"""Calls relay places itself (BACKENDS §6).

* ``jobs``: what a queued call is, its states, campaigns, retries and quiet hours (sans-I/O).
* ``race``: the after-hours race, a call and a text to the person on call, and business hours
  (sans-I/O).
* ``queue`` and ``races``: where jobs and races live — the store's tables, shared by every relay
  on it (SQLite here; Postgres in ``relay.pg.jobs`` and ``relay.pg.races``). Jobs are claimed
  under a per-account lock, so the account's live-call cap and calls per second hold across
  relays; a race's steps run on its locked row, so it has one winner.
* ``rest``: Twilio's REST API through the ``twilio`` library (``RELAY_TWILIO_API_URL`` points
  it at a simulator or any compatible endpoint).
* ``tenant``: a tenant's side — its settings, queueing its calls (API and CLI), its reads.
* ``pool``, ``escalation``: the asyncio shells that place jobs and run races.
* ``service``: what the relay serves of all this: Twilio's requests about placed calls, texts
  to tenants' numbers, and what a call's agent needs (its brief, ``escalate``, keys).
* ``wiring``: all of it put together for a store.
"""
