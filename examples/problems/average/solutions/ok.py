n, *xs = map(int, open(0).read().split())
print(sum(xs) / n)
