"""The web layer every route shares: the route record and its scope, API keys, request bodies
and list parameters, the error hierarchy and its one mapping to HTTP answers, the answers'
schemas and the OpenAPI document. Imports `context`, `storage`, the leaves (`config`,
`metrics`) and `normalizers`; no feature."""
