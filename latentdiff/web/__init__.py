"""``latentdiff serve``: a local web app to generate, inpaint with a painted mask, and draw layouts.

Built on the standard library alone (``http.server`` and a page of plain HTML/JS in ``static/``), so the
core install needs nothing more; the browser test needs the ``ui-test`` extra (selenium) and a system
Chromium. Pieces:

* :mod:`latentdiff.web.jobs` — the request queue: one worker thread runs one job at a time on the one
  model (FIFO, so two tabs generating at once both finish), with per-step progress and cancellation.
* :mod:`latentdiff.web.tasks` — turns a JSON request into a job: checks the limits and decodes uploads up
  front, so a bad request is a one-line message in the page, never a crash.
* :mod:`latentdiff.web.security` — who may use it: Host, Origin and Sec-Fetch-Site checks, the token.
* :mod:`latentdiff.web.server` — the HTTP routes, behind those checks, with bounded bodies and JSON errors.
"""
