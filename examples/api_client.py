"""Two streams over LiveSight's HTTP API: print their narration as it comes, then ask one a question.
Start a server first (livesight serve), then: python examples/api_client.py [http://127.0.0.1:8000]"""
import json, sys, threading
import httpx

url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000"
api = httpx.Client(base_url=url, timeout=120)  # with a token: headers={"Authorization": "Bearer TOKEN"}
ids = [api.post("/v1/streams", json={"source": f"synthetic:{scene}", "seconds": 8}).raise_for_status().json()["id"]
       for scene in ("shapes", "busy")]

def narration(stream_id):  # Server-Sent Events: "event: TYPE" and "data: JSON" lines, a blank line after each
    with httpx.stream("GET", f"{url}/v1/streams/{stream_id}/events", timeout=None) as events:
        for line in events.iter_lines():
            if line.startswith("data: ") and (event := json.loads(line[6:]))["type"] == "caption":
                print(f"[{stream_id} {event['t']:5.1f} s] {event['text']}", flush=True)

for stream_id in ids:
    threading.Thread(target=narration, args=(stream_id,), daemon=True).start()
threading.Event().wait(6)
answer = api.post(f"/v1/streams/{ids[0]}/questions", json={"text": "What moved?"}).raise_for_status().json()
print(f"Q: What moved?  A: {answer['answer']}  (first token after {answer['ttft_ms']} ms)")
for stream_id in ids:
    api.delete(f"/v1/streams/{stream_id}")
