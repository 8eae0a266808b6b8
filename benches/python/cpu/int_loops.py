# Integer loops: amicable numbers by trial division, the shape of MBPP 123.
def divisor_sum(n):
    total = 1
    d = 2
    while d * d <= n:
        if n % d == 0:
            total += d
            if d * d != n:
                total += n // d
        d += 1
    return total


def amicable_sum(limit):
    found = 0
    for a in range(2, limit):
        b = divisor_sum(a)
        if b != a and b < limit and divisor_sum(b) == a:
            found += a
    return found


print(amicable_sum(6000))
