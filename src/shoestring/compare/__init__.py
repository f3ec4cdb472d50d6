"""``shoestring compare``: a report over run directories (md, html, json, PNG plots)."""
