"""Output validator (problem package format): the team's number within the tolerance of the answer."""
import sys

_, answer_file, feedback_dir = sys.argv[1:4]
flags = sys.argv[4:]
tolerance = float(flags[flags.index("float_tolerance") + 1]) if "float_tolerance" in flags else 1e-9
expected = float(open(answer_file).read().split()[0])
try:
    got = float(sys.stdin.read().split()[0])
except (IndexError, ValueError):
    open(feedback_dir + "judgemessage.txt", "w").write("no number in the output\n")
    sys.exit(43)
if abs(got - expected) > tolerance * max(1.0, abs(expected)):
    open(feedback_dir + "judgemessage.txt", "w").write(f"expected {expected}, got {got}\n")
    sys.exit(43)
sys.exit(42)
