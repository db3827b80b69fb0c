"""The OpenAI Videos API (`/v1/videos`) and a playground page, in front of Triton (`wan-triton api`).

A thin front door: each job is one request to a streaming entry over gRPC, with the project's own
client; the contract validates every field; jobs and videos are kept under `--data-dir`.
- videos.py: the API's fields mapped onto the contract (size, seconds, input_reference);
- jobs.py: the job records (SQLite) and files, and the workers that run them on Triton;
- app.py: the routes, auth, limits and metrics (Starlette);
- static/: the playground page (plain HTML, JS and CSS).
"""
