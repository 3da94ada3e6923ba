"""The operator console: server-rendered pages over the same storage functions as the API, at
/console. With API keys on, a login page takes a key into an HttpOnly, SameSite=Strict cookie;
the pages need the scope of the API route they mirror, and every action is a call to the API
itself (with the cookie and a CSRF token), so the console can do nothing the key cannot."""
