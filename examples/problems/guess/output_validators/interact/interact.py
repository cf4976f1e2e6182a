"""Interactive validator (problem package format): the team guesses a number in 1..1000 in at most 10 tries.

The team prints a guess per line; the validator answers "lower", "higher" or "correct".
"""
import sys

secret = int(open(sys.argv[1]).read())
feedback = open(sys.argv[3] + "judgemessage.txt", "w")
for tries in range(1, 11):
    line = sys.stdin.readline()
    if not line:
        feedback.write(f"the team stopped after {tries - 1} guesses\n")
        sys.exit(43)
    guess = int(line)
    if guess == secret:
        print("correct", flush=True)
        sys.exit(42)
    print("lower" if secret < guess else "higher", flush=True)
feedback.write("more than 10 guesses\n")
sys.exit(43)
