import sys
import threading

mode = sys.stdin.read().split()[0]
if mode == "ok":
    print(42)
elif mode == "wa":
    print(41)
elif mode == "tle":
    while True:
        pass
elif mode == "mle":
    kept = []
    while True:
        kept.append(bytearray(1 << 20))
elif mode == "re":
    raise ValueError("crash")
elif mode == "threads":
    halves = []
    workers = [threading.Thread(target=lambda: halves.append(21)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    print(sum(halves))
