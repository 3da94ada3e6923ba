"""Re-emission: the subscriptions API, the dispatcher (signed webhooks with retries), the pull
feed and its Server-Sent Events stream, and the guard on subscriber addresses. Imports the web
layer and storage; no other feature."""
