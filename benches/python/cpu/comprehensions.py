# Comprehensions and builtins over ranges: divisor sums as MBPP 123's reference writes them.
def divisor_sums(limit):
    total = 0
    for num in range(2, limit):
        total += sum([fact for fact in range(1, num) if num % fact == 0])
    return total


print(divisor_sums(2500))
