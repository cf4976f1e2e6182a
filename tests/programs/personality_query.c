/* Benign: query the personality (0xffffffff) and set plain PER_LINUX, which every policy allows. */
#include <stdio.h>
#include <sys/personality.h>

int main(void)
{
    int now = personality(0xffffffff);
    int again = personality(PER_LINUX);
    printf("personality: %d %d\n", now, again);
    return now < 0 || again < 0;
}
