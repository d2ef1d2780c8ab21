"""The reference for the query benchmark: a bare FastAPI endpoint returning constant JSON."""

from fastapi import FastAPI, Response

app = FastAPI()
BODY = (
    b'{"src":"aws:us-east-1","dst":"gcp:europe-west1","path":["aws:us-east-1","gcp:us-east4",'
    b'"gcp:europe-west1"],"rtt_ms":81.2,"cost":83.2,"via_relay":true,"reachable":true,"generation":7}'
)


@app.get("/healthz")
async def healthz() -> dict[str, bool]:
    return {"ok": True}


@app.get("/v1/routes/{src}/{dst}")
async def route(src: str, dst: str) -> Response:
    return Response(BODY, media_type="application/json")
