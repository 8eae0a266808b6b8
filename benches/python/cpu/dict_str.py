# Dicts and strings: word counts over generated text, formatting, joins and sorting.
WORDS = [
    "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa",
    "lambda", "mu", "nu", "xi", "omicron", "pi", "rho", "sigma", "tau", "upsilon",
]


def text(lines):
    state = 7
    out = []
    for _ in range(lines):
        words = []
        for _ in range(12):
            state = (state * 1103515245 + 12345) % 2147483648
            words.append(WORDS[state % len(WORDS)])
        out.append(" ".join(words))
    return "\n".join(out)


def analyse(body):
    counts = {}
    pairs = {}
    for line in body.splitlines():
        words = line.split()
        for word in words:
            counts[word] = counts.get(word, 0) + 1
        for a, b in zip(words, words[1:]):
            key = f"{a}-{b}"
            pairs[key] = pairs.get(key, 0) + 1
    top = sorted(pairs.items(), key=lambda item: (-item[1], item[0]))[:5]
    report = ", ".join(f"{word.upper()}={count}" for word, count in sorted(counts.items()))
    return len(report), top


print(analyse(text(6000)))
