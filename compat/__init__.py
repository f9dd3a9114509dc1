"""Cross-browser compatibility checker: a scenario matrix with real headless browsers.

`compat run` starts a node, Debian's Chromium and Firefox ESR (driven by puppeteer-core) and
an aiortc peer inside a loopback-only network namespace, runs the scenarios of
`compat.scenarios` for every pair, checks the node's SDP answers to recorded offers of
browsers that cannot run here (`compat.sdp`), and writes a terminal matrix, JSON and a
self-contained HTML report. See docs/compat.md.
"""
