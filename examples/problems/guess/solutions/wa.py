# guesses upwards from 1: too many tries for most numbers
for guess in range(1, 1001):
    print(guess, flush=True)
    if input() == "correct":
        break
